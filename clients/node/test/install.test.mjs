// The package installs as a user would install it, into fresh temp
// projects: from a clean copy of this directory (what a fresh clone has:
// no node_modules, no dist/), and from the tarball `npm pack` makes of
// another clean copy. Then `require("@keyward/client")` gets a key from a
// real agent, and the packed types compile. npm uses the registry, with
// its cache in the repo's target/npm-cache (test.sh sets it), so a second
// run is fast and needs no network. The README's example runs as it is
// written in the project that installed the tarball.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { basename, join, relative } from "node:path";
import { promisify } from "node:util";
import { Agent } from "./agent.mjs";

const PACKAGE = join(import.meta.dirname, "..");
const REPO = join(PACKAGE, "../..");
const run = promisify(execFile);

/** npm's environment: the cache under target/, no audit, fund or update checks. */
function npmEnv() {
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (/^npm_/i.test(k)) delete env[k];
  return {
    ...env,
    npm_config_cache: process.env.npm_config_cache || join(REPO, "target/npm-cache"),
    npm_config_prefer_offline: "true",
    npm_config_audit: "false",
    npm_config_fund: "false",
    npm_config_update_notifier: "false",
    npm_config_loglevel: "error",
  };
}

async function npm(args, cwd) {
  const started = performance.now();
  try {
    const { stdout } = await run("npm", args, { cwd, env: npmEnv(), timeout: 300_000, maxBuffer: 16 << 20 });
    return { stdout, seconds: (performance.now() - started) / 1000 };
  } catch (e) {
    assert.fail(`npm ${args.join(" ")} in ${cwd} failed: ${e.message}\n${e.stdout}\n${e.stderr}`);
  }
}

function tempDir(t, what) {
  const dir = mkdtempSync(join(tmpdir(), `keyward-node-${what}-`));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** This directory as a fresh clone has it: without node_modules and dist/. */
function cleanCopy(t) {
  const dir = join(tempDir(t, "clone"), "node");
  cpSync(PACKAGE, dir, {
    recursive: true,
    filter: (src) => {
      const rel = relative(PACKAGE, src);
      return basename(src) !== "node_modules" && rel !== "dist" && rel !== "target";
    },
  });
  return dir;
}

/** A fresh npm project. */
function project(t) {
  const dir = tempDir(t, "app");
  writeFileSync(join(dir, "package.json"), JSON.stringify({ name: "app", version: "1.0.0", private: true }));
  return dir;
}

/** In `app`, `require("@keyward/client")` and get prod/x from `agent`: "v1 <secret>". */
async function getFrom(app, agent) {
  const script = `
    const { Client } = require("@keyward/client");
    const client = new Client(); // KEYWARD_SOCKET, as the README says
    client.get("prod/x").then((ks) => {
      console.log("v" + ks.primary.version + " " + ks.primary.secret.toString());
      client.close();
    });
  `;
  const { stdout } = await run(process.execPath, ["-e", script], {
    cwd: app,
    env: { ...process.env, KEYWARD_SOCKET: agent.socket },
    timeout: 30_000,
  });
  return stdout.trim();
}

const kB = (bytes) => `${(bytes / 1024).toFixed(1)} kB`;

test("npm install from a clean copy of the directory, then require() gets a key", async (t) => {
  const agent = await Agent.start(t);
  agent.cli(["put", "prod/x"], "from-a-clone");
  const clone = cleanCopy(t);
  const app = project(t);

  // prepare (scripts/prepare.mjs) installs the directory's dependencies
  // and builds dist/; npm links the directory into node_modules.
  const { seconds } = await npm(["install", clone], app);
  assert.equal(await getFrom(app, agent), "v1 from-a-clone");
  t.diagnostic(`npm install <clean directory>: ${seconds.toFixed(1)} s`);
});

test("npm pack from a clean copy, npm install of the tarball: require() gets a key, the types compile, the README's example runs", async (t) => {
  const agent = await Agent.start(t);
  agent.cli(["put", "prod/x"], "from-a-tarball");
  agent.cli(["put", "prod/billing-api"], "from-a-tarball"); // the README's key
  const clone = cleanCopy(t);
  const out = tempDir(t, "pack");

  const packed = await npm(["pack", "--json", "--pack-destination", out], clone);
  const [info] = JSON.parse(packed.stdout.slice(packed.stdout.indexOf("[")));
  const tarball = join(out, info.filename);
  assert.deepEqual(readdirSync(out), [info.filename]);
  const files = info.files.map((f) => f.path).sort();
  for (const f of ["dist/index.js", "dist/index.d.ts", "proto/keyward/v1/keys.proto", "README.md", "LICENSE", "package.json"]) {
    assert.ok(files.includes(f), `${f} is not in the tarball: ${files.join(", ")}`);
  }
  assert.deepEqual(
    files.filter((f) => !/^(dist|proto)\//.test(f)),
    ["LICENSE", "README.md", "package.json"],
    "the tarball holds only dist/, proto/, the README, the licence and package.json",
  );

  const app = project(t);
  const installed = await npm(["install", tarball], app);
  assert.equal(await getFrom(app, agent), "v1 from-a-tarball");

  // The packed declarations, as a TypeScript user compiles against them
  // (TypeScript and @types/node from this package's own install).
  writeFileSync(
    join(app, "main.ts"),
    `import { Client, type KeySet } from "@keyward/client";
export async function main(): Promise<number> {
  const handle = await new Client().handle("prod/x");
  handle.on("change", (next: KeySet) => console.log(next.primary.version));
  return handle.current.primary.version;
}
`,
  );
  const tsc = join(PACKAGE, "node_modules/typescript/bin/tsc");
  const typeRoots = join(PACKAGE, "node_modules/@types");
  const args = ["--strict", "--noEmit", "--target", "ES2022", "--module", "commonjs"];
  await run(process.execPath, [tsc, ...args, "--types", "node", "--typeRoots", typeRoots, "main.ts"], { cwd: app }).catch(
    (e) => assert.fail(`the packed types do not compile: ${e.stdout}${e.stderr}`),
  );

  // The README's example, verbatim but for the API's URL, exits by itself
  // (its handle left open) once the call and its key-use report are done.
  const api = createServer((req, res) => res.writeHead(req.headers.authorization === "Bearer from-a-tarball" ? 200 : 401).end());
  await new Promise((r) => api.listen(0, "127.0.0.1", r));
  t.after(() => new Promise((r) => api.close(r)));
  const readme = readFileSync(join(PACKAGE, "README.md"), "utf8");
  const example = /^## Example\n\n```js\n([^]*?)^```$/m.exec(readme)[1];
  const url = "https://api.example.com/v1/me";
  assert.ok(example.includes(url), example);
  writeFileSync(join(app, "example.mjs"), example.replace(url, `http://127.0.0.1:${api.address().port}/v1/me`));
  const { stdout } = await run(process.execPath, ["example.mjs"], {
    cwd: app,
    env: { ...process.env, KEYWARD_SOCKET: agent.socket },
    timeout: 30_000,
  });
  assert.match(stdout.trim(), /^200 [0-9a-f]+$/);
  assert.ok(!stdout.includes("from-a-tarball"));

  t.diagnostic(
    `npm pack <clean directory>: ${packed.seconds.toFixed(1)} s; tarball ${info.filename}: ${kB(statSync(tarball).size)} ` +
      `(${kB(info.unpackedSize)} unpacked, ${info.entryCount} files); npm install <tarball>: ${installed.seconds.toFixed(1)} s`,
  );
});
