import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Agent, eventually } from "./agent.mjs";
import { AgentUnavailableError, Client, KeyNotFoundError, KeywardError } from "../dist/index.js";

test("a handle follows a rotation", async (t) => {
  const agent = await Agent.start(t);
  agent.cli(["put", "prod/x"], "old");
  const client = new Client({ socket: agent.socket });
  t.after(() => client.close());

  const handle = await client.handle("prod/x");
  assert.equal(handle.current.primary.secret.toString(), "old");
  const changes = [];
  handle.on("change", (next, prev) => changes.push([prev.state, next.state]));

  agent.cli(["stage", "prod/x"], "new");
  agent.cli(["promote", "prod/x"]);
  await eventually(() => handle.current.primary.secret.toString() === "new", 5000, "the promoted primary");
  assert.equal(handle.current.fallback.secret.toString(), "old");
  agent.cli(["retire", "prod/x", "--force"]);
  await eventually(() => handle.current.state === "STEADY", 5000, "the retire");
  assert.equal(handle.current.fallback, undefined);
  // The watch may skip an intermediate state, never the latest.
  assert.deepEqual(changes.at(-1), ["PROMOTED", "STEADY"]);
  handle.close();
});

test("a handle survives an agent restart and sees the rotation made after it", async (t) => {
  const agent = await Agent.start(t);
  agent.cli(["put", "prod/x"], "before");
  const client = new Client({ socket: agent.socket });
  t.after(() => client.close());
  const handle = await client.handle("prod/x");
  t.after(() => handle.close());
  let disconnects = 0;
  handle.on("disconnect", () => disconnects++);

  await agent.stop();
  await eventually(() => disconnects > 0, 5000, "the handle to notice the shutdown");
  // While the agent is down the handle keeps serving what it had.
  assert.equal(handle.current.primary.secret.toString(), "before");

  await agent.spawn();
  agent.cli(["stage", "prod/x"], "after");
  agent.cli(["promote", "prod/x"]);
  await eventually(() => handle.current.primary.secret.toString() === "after", 10_000, "the new primary after restart");
  assert.equal(handle.current.fallback.secret.toString(), "before");
});

test("handle() fails at once for an unknown key, and times out without an agent", async (t) => {
  const agent = await Agent.start(t);
  const client = new Client({ socket: agent.socket });
  t.after(() => client.close());
  await assert.rejects(client.handle("prod/nope"), KeyNotFoundError);

  const dir = mkdtempSync(join(tmpdir(), "keyward-node-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const lonely = new Client({ socket: join(dir, "keys.sock") });
  t.after(() => lonely.close());
  const started = Date.now();
  const err = await lonely.handle("prod/x", { timeoutMs: 700 }).catch((e) => e);
  assert.ok(err instanceof KeywardError, err);
  assert.match(err.message, /no KeySet for prod\/x within 700 ms: .*is keywardd running\?/);
  assert.ok(err.cause instanceof AgentUnavailableError);
  assert.ok(Date.now() - started < 3000);
});
