import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, cpSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Agent } from "./agent.mjs";
import {
  AgentUnavailableError,
  Client,
  InvalidKeyError,
  KeyNotFoundError,
  KeywardError,
  PermissionDeniedError,
} from "../dist/index.js";

const PKG = join(import.meta.dirname, "..");

test("no agent: AgentUnavailableError that names the socket and the fix", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "keyward-node-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const socket = join(dir, "keys.sock");
  const client = new Client({ socket });
  t.after(() => client.close());

  const err = await client.get("prod/x").then(() => assert.fail("get succeeded"), (e) => e);
  assert.ok(err instanceof AgentUnavailableError, err);
  assert.ok(err instanceof KeywardError);
  assert.match(err.message, /is keywardd running\?/);
  assert.ok(err.message.includes(`socket ${socket}`), err.message);
  assert.match(err.message, /set KEYWARD_SOCKET/);
});

test("the socket comes from KEYWARD_SOCKET when not given", (t) => {
  const before = process.env.KEYWARD_SOCKET;
  t.after(() => (before === undefined ? delete process.env.KEYWARD_SOCKET : (process.env.KEYWARD_SOCKET = before)));
  process.env.KEYWARD_SOCKET = "/tmp/from-env.sock";
  const a = new Client();
  assert.equal(a.socket, "/tmp/from-env.sock");
  a.close();
  delete process.env.KEYWARD_SOCKET;
  const b = new Client();
  assert.equal(b.socket, "/run/keyward/keys.sock");
  b.close();
});

test("unknown key: KeyNotFoundError; malformed key: InvalidKeyError", async (t) => {
  const agent = await Agent.start(t);
  const client = new Client({ socket: agent.socket });
  t.after(() => client.close());

  const missing = await client.get("prod/nope").catch((e) => e);
  assert.ok(missing instanceof KeyNotFoundError, missing);
  assert.equal(missing.key, "prod/nope");
  assert.match(missing.message, /keyward put prod\/nope/);

  for (const bad of ["PROD/x", "no-slash", "a/b/c"]) {
    const err = await client.get(bad).catch((e) => e);
    assert.ok(err instanceof InvalidKeyError, `${bad}: ${err}`);
  }
});

test("socket permission denied: PermissionDeniedError", async (t) => {
  if (process.getuid() !== 0) {
    t.skip("needs root to run a client as uid 65534 against the agent's 0660 socket");
    return;
  }
  const agent = await Agent.start(t);
  agent.cli(["put", "prod/x"], "secret");

  // uid 65534 must read the package: copy what it needs to a 0755 dir.
  const dir = mkdtempSync(join(tmpdir(), "keyward-node-pkg-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  chmodSync(dir, 0o755);
  for (const part of ["dist", "proto", "node_modules", "package.json"]) {
    cpSync(join(PKG, part), join(dir, part), {
      recursive: true,
      filter: (src) => !/node_modules[/\\](typescript|@types)([/\\]|$)/.test(src),
    });
  }
  writeFileSync(
    join(dir, "probe.js"),
    `const { Client } = require("./dist");
     const c = new Client();
     c.get("prod/x").then(
       () => console.log(JSON.stringify({ ok: true })),
       (e) => console.log(JSON.stringify({ name: e.name, message: e.message, isPD: e instanceof require("./dist").PermissionDeniedError })),
     ).finally(() => c.close());`,
  );
  spawnSync("chmod", ["-R", "a+rX", dir]);

  const r = spawnSync(process.execPath, [join(dir, "probe.js")], {
    uid: 65534,
    gid: 65534,
    cwd: dir,
    env: { KEYWARD_SOCKET: agent.socket, PATH: process.env.PATH },
    encoding: "utf8",
    timeout: 20_000,
  });
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout.trim().split("\n").pop());
  assert.equal(out.name, "PermissionDeniedError", out.message);
  assert.ok(out.isPD);
  assert.match(out.message, /permission denied/i);
  assert.ok(out.message.includes(agent.socket), out.message);
});
