// Copies the repo's service-socket proto (keys.proto) into the package and
// generates TypeScript types from it. The admin protocol (admin.proto) is
// the operators' socket, which this client never uses, so it is not
// shipped. The package loads the copies at runtime, so it works when
// installed on its own; the generated types are committed, and test.sh
// regenerates them into a temp dir to check they are not stale.
//
//   node scripts/gen.mjs                 # writes proto/ and src/generated/
//   node scripts/gen.mjs --out DIR       # writes DIR/proto and DIR/generated
//
// The flags below must match LOADER_OPTIONS in src/proto.ts: the types
// describe what the loader produces.
import { execFileSync } from "node:child_process";
import { cpSync, mkdirSync, rmSync } from "node:fs";
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

// Only the service socket's protocol: admin.proto stays in the repo.
const files = ["keys.proto"];
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
