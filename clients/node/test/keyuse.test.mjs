// Key-use reports (ReportKeyUse) and the x-keyward-client header, against
// real agents: a success tells the agent which version worked, once per
// version per interval, a report the agent refuses never reaches the
// caller, and the agent lists the client's watch as a library's.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { request } from "node:http";
import { join } from "node:path";
import { promisify } from "node:util";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { Agent, eventually, sleep } from "./agent.mjs";
import { Client, USE_REPORT_INTERVAL_MS, VERSION } from "../dist/index.js";
import { UseCounts } from "../dist/keyuse.js";
import { CLIENT_NAME } from "../dist/clientname.js";

const PACKAGE = join(import.meta.dirname, "..");
const REPO_PROTO = join(PACKAGE, "../../proto");

/** A service that accepts one secret and answers 401 to any other. */
const accepts = (good) => async (secret) => ({ status: secret.toString() === good ? 200 : 401 });

function keyUses(agent, key, version) {
  return agent.audit().filter((r) => r.event === "key_use" && r.key === key && r.versions[0].version === version);
}

const metricsConfig =
  (extra = "") =>
  (dir) =>
    `[metrics]\nlisten = "unix:${dir}/metrics.sock"\n${extra}`;

/** `GET /metrics` on the agent's metrics socket: the body. */
function scrape(agent) {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: join(agent.dir, "metrics.sock"), path: "/metrics" }, (res) => {
      let body = "";
      res.on("data", (d) => (body += d));
      res.on("end", () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`HTTP ${res.statusCode}`))));
    });
    req.on("error", reject);
    req.end();
  });
}

/** The sum of every sample of `name`, whatever its labels. */
async function total(agent, name) {
  return (await scrape(agent))
    .split("\n")
    .filter((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `))
    .reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(" ") + 1)), 0);
}

test("a success reports the version that worked", async (t) => {
  const agent = await Agent.start(t);
  agent.cli(["put", "prod/x"], "old");
  agent.cli(["stage", "prod/x"], "new");
  const client = new Client({ socket: agent.socket });
  t.after(() => client.close());
  const handle = await client.handle("prod/x");

  // The provider already switched: the fallback (v2) is what works.
  const res = await client.callWithFallback(handle, accepts("new"), { service: "billing-worker" });
  assert.equal(res.status, 200);
  const [record] = await eventually(
    () => keyUses(agent, "prod/x", 2).length > 0 && keyUses(agent, "prod/x", 2),
    5000,
    "a key_use record of v2",
  );
  assert.equal(record.outcome, "reported");
  assert.equal(record.versions[0].role, "fallback");
  assert.match(record.detail, /1 successful call.*billing-worker/);
  // The refused primary is an auth failure, never a use.
  assert.deepEqual(keyUses(agent, "prod/x", 1), []);

  // By key name, the primary working: its own report (cool-down 0: the
  // provider took v1 back at once, no memory of its refusal).
  await client.callWithFallback("prod/x", accepts("old"), { fallbackCooldownMs: 0 });
  await eventually(() => keyUses(agent, "prod/x", 1).length > 0, 5000, "a key_use record of v1");
  assert.equal(keyUses(agent, "prod/x", 2).length, 1);
});

test("an error status is not a use", async (t) => {
  const agent = await Agent.start(t);
  agent.cli(["put", "prod/x"], "one");
  const client = new Client({ socket: agent.socket });
  t.after(() => client.close());

  assert.equal((await client.callWithFallback("prod/x", async () => ({ status: 503 }))).status, 503);
  await sleep(300);
  assert.deepEqual(keyUses(agent, "prod/x", 1), []);
});

test("a burst of successes is one report", async (t) => {
  const agent = await Agent.start(t, { config: metricsConfig() });
  agent.cli(["put", "prod/x"], "one");
  const client = new Client({ socket: agent.socket });
  t.after(() => client.close());
  const handle = await client.handle("prod/x");

  const started = performance.now();
  for (let i = 0; i < 50; i++) await client.callWithFallback(handle, accepts("one"));
  await eventually(async () => (await total(agent, "keyward_key_use_reports_total")) >= 1, 5000, "a report");
  // The handle shares the client's count.
  for (let i = 0; i < 10; i++) handle.reportUse(1);
  assert.ok(performance.now() - started < USE_REPORT_INTERVAL_MS, "the burst took longer than the interval");
  // Nothing else is on its way: a report is sent right after the success
  // that makes it due, if at all.
  await sleep(500);
  assert.equal(await total(agent, "keyward_key_use_reports_total"), 1);
  assert.equal(keyUses(agent, "prod/x", 1).length, 1);
});

test("a handle reports the version the application used", async (t) => {
  const agent = await Agent.start(t);
  agent.cli(["put", "prod/x"], "old");
  agent.cli(["stage", "prod/x"], "new");
  agent.cli(["promote", "prod/x"]);
  const client = new Client({ socket: agent.socket });
  t.after(() => client.close());
  const handle = await client.handle("prod/x");
  const ks = handle.current;

  assert.equal(handle.reportUse(ks.primary.version, "billing-worker"), undefined);

  const [record] = await eventually(
    () => keyUses(agent, "prod/x", ks.primary.version).length > 0 && keyUses(agent, "prod/x", ks.primary.version),
    5000,
    "a key_use record",
  );
  assert.equal(record.versions[0].role, "primary");
  assert.match(record.detail, /billing-worker/);
});

test("a refused report does not fail the call", async (t) => {
  // One report per uid, then one a second: the agent refuses the rest.
  const agent = await Agent.start(t, { config: metricsConfig("[alerts]\nreport_rate = 1\nreport_burst = 1\n") });
  agent.cli(["put", "prod/x"], "one");
  const client = new Client({ socket: agent.socket });
  t.after(() => client.close());
  const handle = await client.handle("prod/x");
  await client.reportAuthFailure("prod/x", 1, 401, "test", "uses up the burst");

  const started = performance.now();
  assert.equal((await client.callWithFallback(handle, accepts("one"))).status, 200);
  assert.ok(performance.now() - started < 1000, "the report delayed the call");

  // The report was sent, and refused.
  await eventually(
    async () => (await total(agent, "keyward_auth_failure_reports_dropped_total")) >= 1,
    5000,
    "the refusal of the key-use report",
  );
  assert.deepEqual(keyUses(agent, "prod/x", 1), []);
});

test("a report to a stopped agent does not fail the call", async (t) => {
  const agent = await Agent.start(t);
  agent.cli(["put", "prod/x"], "one");
  const client = new Client({ socket: agent.socket });
  t.after(() => client.close());
  const handle = await client.handle("prod/x");
  await agent.stop(); // the report will fail: nobody is listening

  const started = performance.now();
  assert.equal((await client.callWithFallback(handle, accepts("one"))).status, 200);
  handle.reportUse(1);
  assert.ok(performance.now() - started < 1000, "the report delayed the call");
});

test("a process with only a report in flight exits", async (t) => {
  const agent = await Agent.start(t);
  agent.cli(["put", "prod/x"], "one");
  const script = `
    const { Client } = require(${JSON.stringify(join(PACKAGE, "dist/index.js"))});
    const client = new Client();
    client.callWithFallback("prod/x", async () => "ok").then((v) => console.log(v));
  `;
  const started = performance.now();
  const { stdout } = await promisify(execFile)(process.execPath, ["-e", script], {
    env: { ...process.env, KEYWARD_SOCKET: agent.socket },
    timeout: 30_000,
  });
  assert.equal(stdout.trim(), "ok");
  assert.ok(performance.now() - started < 10_000, `took ${performance.now() - started} ms`);
  await eventually(() => keyUses(agent, "prod/x", 1).length > 0, 5000, "the report of the exited process");
});

test("the watch is listed as a library", async (t) => {
  const agent = await Agent.start(t);
  agent.cli(["put", "prod/x"], "one");
  const client = new Client({ socket: agent.socket });
  t.after(() => client.close());
  await client.handle("prod/x");

  const status = await rotationStatus(t, agent, "prod", "x");
  const mine = status.subscribers.filter((s) => s.pid === process.pid);
  assert.deepEqual(
    mine.map((s) => s.kind),
    ["library"],
    JSON.stringify(status.subscribers),
  );
});

test("the header names this version", () => {
  const pkg = JSON.parse(readFileSync(join(PACKAGE, "package.json"), "utf8"));
  assert.equal(VERSION, pkg.version);
  assert.equal(CLIENT_NAME, `node/${pkg.version}`);
});

test("UseCounts: one report per version per interval, carrying the count", () => {
  const u = new UseCounts();
  const I = USE_REPORT_INTERVAL_MS;
  const steps = [
    ["prod/a", 1, 0, 1],
    ["prod/a", 1, 1, undefined],
    ["prod/a", 2, 2, 1],
    ["prod/b", 1, 3, 1],
    ["prod/a", 1, I - 1, undefined],
    // The interval has passed: the 3 successes since the report, this one
    // included.
    ["prod/a", 1, I, 3],
    ["prod/a", 1, I + 1, undefined],
    ["prod/a", 1, 3 * I, 2],
  ];
  for (const [key, version, at, want] of steps) {
    assert.equal(u.record(key, version, 1000 + at), want, `${key} v${version} at ${at}`);
  }
  // Memory stays bounded.
  for (let v = 0; v < 300; v++) u.record("prod/c", v, 2000 + v);
  assert.ok(u.size <= 256, `${u.size}`);
});

/**
 * GetRotationStatus on the agent's admin socket (`keyward rotation-status`
 * does not print the subscribers' kind). The admin protocol is not part of
 * this package: it is loaded from the repo's proto/ here.
 */
async function rotationStatus(t, agent, environment, name) {
  const def = protoLoader.loadSync("keyward/v1/admin.proto", {
    includeDirs: [REPO_PROTO],
    keepCase: false,
    longs: Number,
    enums: String,
    defaults: true,
  });
  const { Admin } = grpc.loadPackageDefinition(def).keyward.v1;
  const admin = new Admin(`unix://${join(agent.dir, "admin.sock")}`, grpc.credentials.createInsecure(), {
    "grpc.default_authority": "localhost",
  });
  t.after(() => admin.close());
  return promisify(admin.getRotationStatus.bind(admin))({ key: { environment, name } });
}
