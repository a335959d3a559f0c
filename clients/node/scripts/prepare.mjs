// npm's `prepare` script: builds dist/ (tsc), so that the package works
// when installed from a clone (`npm install /path/to/clients/node`) and
// when packed (`npm pack`, which runs prepare first).
//
// For a directory dependency npm does less than for a git one: it runs
// `prepare` in the directory but installs none of the directory's own
// dependencies there (pacote's DirFetcher: "we *only* run prepare"), and
// by default it links the directory into node_modules, so Node resolves
// @grpc/grpc-js from the directory itself. A fresh clone has neither
// TypeScript for the build nor the runtime dependencies. So when this
// directory has no node_modules with TypeScript in it, this installs them
// from the committed lockfile first (`npm ci`, dev dependencies included),
// then builds. When they are there (a developer's `npm ci`, which also
// runs prepare), it only builds.
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const pkg = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const tsc = join(pkg, "node_modules", "typescript", "bin", "tsc");
// npm passes its own settings to scripts as npm_config_* variables. The
// ones below are about the project being installed into (its prefix, a
// global install, omitted dev dependencies…) or the output the outer
// command was asked for (`npm pack --json`), not this directory: a nested
// npm must not inherit them. Registry, cache, proxy and auth settings are
// kept.
const NOT_OURS = [
  "global",
  "location",
  "prefix",
  "local_prefix",
  "global_prefix",
  "omit",
  "include",
  "production",
  "only",
  "dev",
  "workspace",
  "workspaces",
  "include_workspace_root",
  "install_links",
  "ignore_scripts",
  "dry_run",
  "package_lock",
  "package_lock_only",
  "save",
  "save_dev",
  "save_prod",
  "save_optional",
  "save_exact",
  "json",
  "parseable",
  "long",
];

function npm(args) {
  const env = { ...process.env };
  for (const name of Object.keys(env)) {
    const m = /^npm_config_(.*)$/i.exec(name);
    if (m && NOT_OURS.includes(m[1].toLowerCase().replace(/-/g, "_"))) delete env[name];
  }
  // npm_execpath is the npm that runs this script; fall back to PATH.
  const [cmd, pre] = process.env.npm_execpath ? [process.execPath, [process.env.npm_execpath]] : ["npm", []];
  // Its output goes to stderr: the outer command's stdout is its own
  // (`npm pack` prints the tarball's name there, or JSON).
  execFileSync(cmd, [...pre, ...args], { cwd: pkg, env, stdio: ["ignore", 2, 2] });
}

if (!existsSync(tsc)) {
  console.error("@keyward/client: installing its build and runtime dependencies (npm ci) before building dist/");
  // --ignore-scripts: npm ci would run this prepare script again.
  npm(["ci", `--prefix=${pkg}`, "--include=dev", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]);
}
execFileSync(process.execPath, [tsc, "-p", join(pkg, "tsconfig.json")], { cwd: pkg, stdio: ["ignore", 2, 2] });
