import { test } from "node:test";
import assert from "node:assert/strict";
import { Agent } from "./agent.mjs";
import { Client, KeyNotFoundError } from "../dist/index.js";

test("watch sees the initial KeySet, then each rotation step", async (t) => {
  const agent = await Agent.start(t);
  agent.cli(["put", "prod/x"], "old");
  const client = new Client({ socket: agent.socket });
  t.after(() => client.close());

  const events = client.watch(["prod/x"]);
  const first = (await events.next()).value;
  assert.equal(first.reason, "initial");
  assert.equal(first.primary.secret.toString(), "old");

  agent.cli(["stage", "prod/x"], "new");
  const staged = (await events.next()).value;
  assert.equal(staged.reason, "staged");
  assert.equal(staged.state, "STAGED");
  assert.equal(staged.fallback.secret.toString(), "new");
  assert.ok(staged.generation > first.generation);

  agent.cli(["promote", "prod/x"]);
  const promoted = (await events.next()).value;
  assert.equal(promoted.reason, "promoted");
  assert.equal(promoted.primary.secret.toString(), "new");
  assert.equal(promoted.fallback.secret.toString(), "old");

  agent.cli(["retire", "prod/x", "--force"]);
  const retired = (await events.next()).value;
  assert.equal(retired.state, "STEADY");
  assert.equal(retired.fallback, undefined);

  // return() cancels the call: a pending next() ends, later ones too.
  const pending = events.next();
  await events.return();
  assert.deepEqual(await pending, { done: true, value: undefined });
  assert.equal((await events.next()).done, true);
});

test("watch of an unknown key fails with KeyNotFoundError", async (t) => {
  const agent = await Agent.start(t);
  const client = new Client({ socket: agent.socket });
  t.after(() => client.close());
  await assert.rejects(async () => {
    for await (const _ of client.watch(["prod/nope"])) assert.fail("got an event");
  }, KeyNotFoundError);
});

test("watch ends when the agent shuts down", async (t) => {
  const agent = await Agent.start(t);
  agent.cli(["put", "prod/x"], "v");
  const client = new Client({ socket: agent.socket });
  t.after(() => client.close());
  const seen = [];
  const done = (async () => {
    try {
      for await (const ks of client.watch(["prod/x"])) seen.push(ks.reason);
    } catch {
      // A shutdown may end the stream with UNAVAILABLE or end it cleanly.
    }
  })();
  while (seen.length === 0) await new Promise((r) => setTimeout(r, 20));
  await agent.stop();
  await done;
  assert.deepEqual(seen, ["initial"]);
});
