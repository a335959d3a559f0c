import { test } from "node:test";
import assert from "node:assert/strict";
import { inspect } from "node:util";
import { Agent } from "./agent.mjs";
import { Client, KeyVersion } from "../dist/index.js";

test("get returns the exact secret bytes, primary and fallback", async (t) => {
  const agent = await Agent.start(t);
  const secret = Buffer.from([0x00, 0xff, 0x0a, 0x41, 0x0d, 0x80, 0x0a]);
  agent.cli(["put", "prod/x", "--raw"], secret);
  const client = new Client({ socket: agent.socket });
  t.after(() => client.close());

  let ks = await client.get("prod/x");
  assert.equal(ks.key, "prod/x");
  assert.equal(ks.state, "STEADY");
  assert.ok(ks.generation >= 1);
  assert.ok(ks.primary instanceof KeyVersion);
  assert.equal(ks.primary.version, 1);
  assert.deepEqual(ks.primary.secret, secret);
  assert.match(ks.primary.fingerprint, /^[0-9a-f]+$/);
  assert.ok(ks.primary.createdAt instanceof Date);
  assert.equal(ks.fallback, undefined);

  agent.cli(["stage", "prod/x"], "second\n");
  ks = await client.get("prod/x");
  assert.equal(ks.state, "STAGED");
  assert.deepEqual(ks.primary.secret, secret);
  assert.equal(ks.fallback.secret.toString(), "second");
  assert.equal(ks.fallback.version, 2);
});

test("inspect and JSON of a KeySet show fingerprints, never the secret", async (t) => {
  const agent = await Agent.start(t);
  const secret = "s3cr3t-value-that-must-not-leak";
  agent.cli(["put", "prod/x"], secret);
  const client = new Client({ socket: agent.socket });
  t.after(() => client.close());

  const ks = await client.get("prod/x");
  for (const shown of [inspect(ks, { depth: 10, showHidden: true }), JSON.stringify(ks), inspect(ks.primary), String(ks.primary)]) {
    assert.ok(!shown.includes(secret), `secret shown in ${shown}`);
    assert.ok(!shown.includes(Buffer.from(secret).toString("hex")));
  }
  assert.match(inspect(ks), new RegExp(ks.primary.fingerprint));
  assert.deepEqual(Object.keys(JSON.parse(JSON.stringify(ks.primary))).sort(), ["createdAt", "fingerprint", "version"]);
  assert.equal(ks.primary.secret.toString(), secret);
});
