// KeyHandle's events are typed: a listener of the wrong type is a compile
// error under tsc --strict. (test.sh also checks examples/ and
// test/types/listeners.ts, whose @ts-expect-error lines fail the check if
// the events lose their types.)
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";

const PACKAGE = join(import.meta.dirname, "..");
const TSC = join(PACKAGE, "node_modules/typescript/bin/tsc");

/** Runs tsc --strict --noEmit on `source`, importing the built package as "@keyward/client". */
async function typecheck(t, source) {
  const dir = mkdtempSync(join(tmpdir(), "keyward-node-types-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, "main.ts"), source);
  writeFileSync(
    join(dir, "tsconfig.json"),
    JSON.stringify({
      extends: join(PACKAGE, "examples/tsconfig.json"),
      compilerOptions: { typeRoots: [join(PACKAGE, "node_modules/@types")] },
      include: [join(dir, "main.ts")],
    }),
  );
  try {
    await promisify(execFile)(process.execPath, [TSC, "--strict", "--noEmit", "-p", dir]);
    return { ok: true, output: "" };
  } catch (e) {
    return { ok: false, output: `${e.stdout}${e.stderr}` };
  }
}

const header = `import { Client, type KeySet } from "@keyward/client";
export async function f(): Promise<void> {
  const handle = await new Client().handle("prod/x");
`;

test("a change listener typed (ks: KeySet) compiles", async (t) => {
  const r = await typecheck(t, `${header}  handle.on("change", (ks: KeySet, prev: KeySet) => console.log(ks.primary.version, prev.key));\n}\n`);
  assert.ok(r.ok, r.output);
});

test("a change listener of the wrong type does not compile", async (t) => {
  const r = await typecheck(t, `${header}  handle.on("change", (ks: string) => console.log(ks.length));\n}\n`);
  assert.equal(r.ok, false, "tsc accepted a change listener taking a string");
  // Argument of type '(ks: string) => void' is not assignable…, on line 4.
  assert.match(r.output, /main\.ts\(4,\d+\): error TS2345: .*\(ks: string\) => void/);
});

test("an unknown event name does not compile", async (t) => {
  const r = await typecheck(t, `${header}  handle.on("chnage", () => {});\n}\n`);
  assert.equal(r.ok, false, "tsc accepted an unknown event");
  assert.match(r.output, /main\.ts\(4,\d+\): error TS2345: Argument of type '"chnage"'/);
});
