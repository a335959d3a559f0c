// Copies the repo's protos into the package and generates TypeScript types
// from them. The package loads the copies at runtime, so it works when
// installed on its own; the generated types are committed, and test.sh
// regenerates them into a temp dir to check they are not stale.
//
//   node scripts/gen.mjs                 # writes proto/ and src/generated/
//   node scripts/gen.mjs --out DIR       # writes DIR/proto and DIR/generated
//
// The flags below must match LOADER_OPTIONS in src/proto.ts: the types
// describe what the loader produces.
import { execFileSync } from "node:child_process";
import { cpSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const pkg = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const repoProtos = resolve(pkg, "../../proto/keyward/v1");

const outIdx = process.argv.indexOf("--out");
const out = outIdx > 0 ? resolve(process.argv[outIdx + 1]) : null;
const protoDir = out ? join(out, "proto") : join(pkg, "proto");
const typesDir = out ? join(out, "generated") : join(pkg, "src", "generated");

// Start from empty directories so a removed proto leaves no stale file.
rmSync(protoDir, { recursive: true, force: true });
rmSync(typesDir, { recursive: true, force: true });
mkdirSync(join(protoDir, "keyward", "v1"), { recursive: true });

const files = readdirSync(repoProtos).filter((f) => f.endsWith(".proto")).sort();
for (const f of files) {
  cpSync(join(repoProtos, f), join(protoDir, "keyward", "v1", f));
}

const bin = join(pkg, "node_modules", ".bin", "proto-loader-gen-types");
execFileSync(
  bin,
  [
    "--longs=Number",
    "--enums=String",
    "--defaults",
    "--oneofs",
    "--includeComments",
    "--grpcLib=@grpc/grpc-js",
    // Relative to cwd: the generated files name their source as
    // "proto/keyward/v1/…", the same bytes wherever they are generated.
    "--includeDirs=proto",
    `--outDir=${typesDir}`,
    ...files.map((f) => `keyward/v1/${f}`),
  ],
  { stdio: "inherit", cwd: dirname(protoDir) },
);
