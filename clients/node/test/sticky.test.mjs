// Sticky fallback: after the provider refuses the primary, callWithFallback
// goes straight to the fallback for the cool-down, per Client, until the
// cool-down passes or the agent pushes a new KeySet; refusals are reported
// once per version per interval, the next report naming how many were held
// back. Against real agents; the "provider" is a function that refuses the
// primary's secret (401) and accepts the fallback's.
import { test } from "node:test";
import assert from "node:assert/strict";
import { eventually, promotedAgent, sleep } from "./agent.mjs";
import { Client, DEFAULT_FALLBACK_COOLDOWN_MS, KeywardError } from "../dist/index.js";
import { Refusals } from "../dist/sticky.js";

const CALLS = 50;

/** A provider that revoked the primary ("new") early: 401 to it, 200 to "old". */
function provider() {
  const seen = { new: 0, old: 0 };
  const fn = async (secret) => {
    const s = secret.toString();
    seen[s]++;
    return { status: s === "old" ? 200 : 401 };
  };
  return { fn, seen };
}

/** The agent's auth_failure records about version 2 of prod/x. */
function refusalsOfV2(agent) {
  return agent.audit().filter((r) => r.event === "auth_failure" && r.key === "prod/x" && r.versions[0].version === 2);
}

async function calls(client, key, fn, n = CALLS, opts = {}) {
  for (let i = 0; i < n; i++) {
    const res = await client.callWithFallback(key, fn, opts);
    assert.equal(res.status, 200);
  }
}

test("during an early revocation the primary gets one call per caller per cool-down", async (t) => {
  const agent = await promotedAgent(t);
  // Two callers: one through a handle, one by key name (a get per call).
  const a = new Client({ socket: agent.socket, fallbackCooldownMs: 3000 });
  const b = new Client({ socket: agent.socket, fallbackCooldownMs: 3000 });
  t.after(() => (a.close(), b.close()));
  const handle = await a.handle("prod/x");
  const pa = provider();
  const pb = provider();

  const started = performance.now();
  await calls(a, handle, pa.fn);
  await calls(b, "prod/x", pb.fn);
  const took = performance.now() - started;
  assert.ok(took < 3000, `the calls took ${took} ms, longer than the cool-down`);
  assert.deepEqual(pa.seen, { new: 1, old: CALLS });
  assert.deepEqual(pb.seen, { new: 1, old: CALLS });
  // One report per caller: the skipped calls are counted, not sent.
  await eventually(() => refusalsOfV2(agent).length === 2, 5000, "a report from each caller");
  await sleep(300);
  assert.equal(refusalsOfV2(agent).length, 2);

  // Without the cool-down: the primary first on every call.
  const c = new Client({ socket: agent.socket, fallbackCooldownMs: 0 });
  t.after(() => c.close());
  const pc = provider();
  await calls(c, "prod/x", pc.fn);
  assert.deepEqual(pc.seen, { new: CALLS, old: CALLS });
  // A call's own option overrides the client's.
  const pa0 = provider();
  await calls(a, handle, pa0.fn, 5, { fallbackCooldownMs: 0 });
  assert.equal(pa0.seen.new, 5);

  t.diagnostic(
    `calls to the revoked primary per caller over ${CALLS} calls: cool-down 3 s: ${pa.seen.new} (handle), ` +
      `${pb.seen.new} (by key name); cool-down 0: ${pc.seen.new}`,
  );
});

test("after the cool-down the primary is tried once more; the refusals held back are counted into its report", async (t) => {
  const agent = await promotedAgent(t);
  const cooldown = 1000;
  const client = new Client({ socket: agent.socket, fallbackCooldownMs: cooldown });
  t.after(() => client.close());
  const handle = await client.handle("prod/x");
  const p = provider();

  const started = performance.now();
  await calls(client, handle, p.fn);
  assert.ok(performance.now() - started < cooldown, "the first calls took longer than the cool-down");
  assert.equal(p.seen.new, 1);
  const [first] = await eventually(() => refusalsOfV2(agent).length === 1 && refusalsOfV2(agent), 5000, "the first report");
  assert.match(first.detail, /^status 401 on primary version 2 .*: Object; retrying with fallback v1$/);

  await sleep(cooldown + 100);
  await calls(client, handle, p.fn);
  assert.equal(p.seen.new, 2, "the primary was not tried again once, after the cool-down");
  // Its refusal went out at once, with the 49 skipped calls of the first
  // cool-down; those of the second are held for the next report.
  const [, second] = await eventually(() => refusalsOfV2(agent).length === 2 && refusalsOfV2(agent), 5000, "the second report");
  assert.match(second.detail, /: Object; retrying with fallback v1 \(and 49 more refusals since the last report\)$/);
  await sleep(300);
  assert.equal(refusalsOfV2(agent).length, 2);
  t.diagnostic(
    `cool-down ${cooldown} ms: ${p.seen.new} calls to the revoked primary over ${2 * CALLS} calls in two cool-downs; ` +
      `${refusalsOfV2(agent).length} reports`,
  );
});

test("a pushed KeySet clears the mark at once", async (t) => {
  const agent = await promotedAgent(t);
  const client = new Client({ socket: agent.socket }); // the default cool-down, 10 s
  t.after(() => client.close());
  assert.equal(client.fallbackCooldownMs, DEFAULT_FALLBACK_COOLDOWN_MS);
  const handle = await client.handle("prod/x");
  const p = provider();
  await calls(client, handle, p.fn, 10);
  assert.equal(p.seen.new, 1);

  // Rolled back and promoted again: the same versions (primary v2,
  // fallback v1) in a new generation. Only the push can tell that the
  // provider may take v2 now.
  const generation = handle.current.generation;
  agent.cli(["rollback", "prod/x"]);
  agent.cli(["promote", "prod/x"]);
  await eventually(
    () => handle.current.generation > generation + 1 && handle.current.state === "PROMOTED",
    5000,
    "the handle to see the new promotion",
  );
  assert.equal(handle.current.primary.version, 2);
  await calls(client, handle, p.fn, 10);
  assert.equal(p.seen.new, 2, "the primary was skipped after a new KeySet was pushed");
});

test("with a cool-down of 0 every refusal is tried, and reported at most every 200 ms with the count", async (t) => {
  const agent = await promotedAgent(t);
  const client = new Client({ socket: agent.socket, fallbackCooldownMs: 0 });
  t.after(() => client.close());
  const handle = await client.handle("prod/x");
  const p = provider();
  await calls(client, handle, p.fn);
  await sleep(250);
  await calls(client, handle, p.fn, 1);
  assert.equal(p.seen.new, CALLS + 1);
  // Every refusal accounted for: each report counts itself and the ones
  // held back before it.
  await eventually(() => refusalsOfV2(agent).length >= 2, 5000, "two reports");
  await sleep(300);
  const records = refusalsOfV2(agent);
  const counted = records.reduce((n, r) => n + 1 + Number(/\(and (\d+) more refusals/.exec(r.detail)?.[1] ?? 0), 0);
  const lastHeld = CALLS + 1 - counted; // held after the last report, not sent
  assert.ok(records.length < 10, `${records.length} reports for ${CALLS + 1} refusals`);
  assert.ok(lastHeld >= 0 && lastHeld < CALLS, `${counted} refusals reported, ${CALLS + 1} made`);
  assert.match(records.at(-1).detail, /\(and \d+ more refusals since the last report\)$/);
});

test("fallbackCooldownMs must be a duration", () => {
  assert.throws(() => new Client({ socket: "/nonexistent", fallbackCooldownMs: -1 }), KeywardError);
  assert.throws(() => new Client({ socket: "/nonexistent", fallbackCooldownMs: Number.NaN }), /not a duration/);
  assert.equal(new Client({ socket: "/nonexistent", fallbackCooldownMs: 0 }).fallbackCooldownMs, 0);
});

test("Refusals: marks follow the KeySet, reports one per interval, memory bounded", () => {
  const v = (version) => ({ version });
  const ks = (primary, fallback) => ({ key: "prod/a", primary: v(primary), fallback: fallback && v(fallback) });
  const r = new Refusals();
  const s21 = ks(2, 1);
  r.mark(s21, 2, 1000, 401, "Response");
  assert.ok(r.marked(s21, 2, 1500, 1000));
  assert.equal(r.marked(s21, 2, 2000, 1000), undefined, "expired");
  assert.equal(r.marked(s21, 1, 1500, 1000), undefined, "another version");
  assert.equal(r.marked(ks(2, 3), 2, 1500, 1000), undefined, "another fallback");
  r.forKeySet(s21);
  assert.ok(r.marked(s21, 2, 1500, 1000), "same versions: kept");
  r.forKeySet(ks(3, 2));
  assert.equal(r.marked(s21, 2, 1500, 1000), undefined, "other versions: forgotten");
  r.mark(s21, 2, 1000, 401, "Response");
  r.forget("prod/a");
  assert.equal(r.marked(s21, 2, 1500, 1000), undefined, "forget");

  const steps = [
    [0, 0],
    [100, undefined],
    [150, undefined],
    [1000, 2],
    [1001, undefined],
    [5000, 1],
  ];
  for (const [at, want] of steps) assert.equal(r.toReport("prod/a", 2, at, 1000), want, `at ${at}`);

  for (let i = 0; i < 3000; i++) r.mark(ks(i + 1, undefined), i, i, 401, "Response");
  assert.ok(r.size <= 1024, `${r.size}`);
});

test("a call whose fallback is refused while the primary is skipped tries the primary too", async (t) => {
  const agent = await promotedAgent(t);
  const client = new Client({ socket: agent.socket, fallbackCooldownMs: 5000 });
  t.after(() => client.close());
  let refuseOld = false;
  const seen = [];
  const fn = async (secret) => {
    const s = secret.toString();
    seen.push(s);
    return { status: s === "new" || refuseOld ? 401 : 200 };
  };
  // The primary ("new") is refused: marked; the fallback answers.
  assert.equal((await client.callWithFallback("prod/x", fn)).status, 200);
  // Within the cool-down the fallback goes first; refused now, the
  // skipped primary is tried as well, and the last refusal is returned.
  refuseOld = true;
  assert.equal((await client.callWithFallback("prod/x", fn)).status, 401);
  assert.deepEqual(seen, ["new", "old", "old", "new"]);
});
