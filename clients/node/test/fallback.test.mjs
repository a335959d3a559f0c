import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createServer } from "node:http";
import { join } from "node:path";
import { promisify } from "node:util";
import { eventually, promotedAgent, sleep } from "./agent.mjs";
import { Client, isAuthRejection } from "../dist/index.js";

const EXAMPLE = join(import.meta.dirname, "../../../examples/node/fallback-http.mjs");

/** A local API that accepts only `Bearer <good>`: 401 otherwise. */
async function api(t, good) {
  const seen = [];
  const server = createServer((req, res) => {
    const auth = req.headers.authorization ?? "";
    seen.push(auth);
    if (auth === `Bearer ${good}`) {
      res.writeHead(200).end("welcome");
    } else {
      res.writeHead(401).end("bad token");
    }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  t.after(() => new Promise((r) => server.close(r)));
  return { url: `http://127.0.0.1:${server.address().port}/v1/me`, seen };
}

function authFailures(agent) {
  return agent.audit().filter((r) => r.event === "auth_failure");
}

test("callWithFallback: primary refused (401), fallback accepted, failure reported", async (t) => {
  const agent = await promotedAgent(t);
  const { url, seen } = await api(t, "old");
  const client = new Client({ socket: agent.socket });
  t.after(() => client.close());
  const handle = await client.handle("prod/x");
  const primaryVersion = handle.current.primary.version;

  const res = await client.callWithFallback(
    handle,
    (secret) => fetch(url, { headers: { authorization: `Bearer ${secret.toString()}` } }),
    { service: "node-client-test" },
  );
  assert.equal(res.status, 200);
  assert.equal(await res.text(), "welcome");
  assert.deepEqual(seen, ["Bearer new", "Bearer old"]);

  const [report] = await eventually(() => {
    const r = authFailures(agent);
    return r.length > 0 && r;
  }, 5000, "an auth_failure record in the audit log");
  assert.equal(report.key, "prod/x");
  assert.equal(report.versions[0].version, primaryVersion);
  assert.match(report.detail, /status 401 on primary version \d+ from service "node-client-test"/);
});

test("callWithFallback with a key name, thrown errors, and a non-auth error", async (t) => {
  const agent = await promotedAgent(t);
  const client = new Client({ socket: agent.socket });
  t.after(() => client.close());

  // Thrown auth errors (statusCode 403) fall back; the success is returned.
  const used = [];
  const out = await client.callWithFallback("prod/x", async (secret) => {
    used.push(secret.toString());
    if (secret.toString() === "new") throw Object.assign(new Error("forbidden"), { statusCode: 403 });
    return "ok";
  });
  assert.equal(out, "ok");
  assert.deepEqual(used, ["new", "old"]);

  // The fallback refused too: the last error is thrown. The primary, refused
  // a moment ago, goes after the fallback (sticky fallback, default
  // cool-down 10 s) and is tried once the fallback is refused.
  used.length = 0;
  const both = await client
    .callWithFallback("prod/x", async (secret) => {
      used.push(secret.toString());
      throw Object.assign(new Error("nope"), { status: 401 });
    })
    .catch((e) => e);
  assert.equal(both.message, "nope");
  assert.deepEqual(used, ["old", "new"]);

  // Any other error is not an auth rejection: no fallback, no report. (Both
  // versions refused within the cool-down: the primary is tried first.)
  let calls = 0;
  await assert.rejects(
    client.callWithFallback("prod/x", async () => {
      calls++;
      throw new Error("ECONNRESET");
    }),
    /ECONNRESET/,
  );
  assert.equal(calls, 1);

  // One report per version: the primary's (403), the fallback's (401); the
  // primary's second refusal, within the interval, is counted for the next
  // report.
  await eventually(() => authFailures(agent).length === 2, 5000, "two auth_failure records");
  await sleep(300);
  const records = authFailures(agent);
  assert.deepEqual(
    records.map((r) => [r.versions[0].role, r.detail.match(/^status (\d+)/)[1]]),
    [
      ["primary", "403"],
      ["fallback", "401"],
    ],
  );
  assert.match(records[0].detail, /: Error; retrying with fallback v1$/);
  assert.match(records[1].detail, /: Error; retrying with primary v2$/);
});

test("isAuthRejection: 401/403 on status, statusCode or response.status", () => {
  assert.ok(isAuthRejection({ status: 401 }));
  assert.ok(isAuthRejection({ statusCode: 403 }));
  assert.ok(isAuthRejection({ response: { status: 401 } }));
  assert.ok(!isAuthRejection({ status: 500 }));
  assert.ok(!isAuthRejection(new Error("x")));
  assert.ok(!isAuthRejection(null));
});

test("examples/node/fallback-http.mjs gets 200 through the fallback", async (t) => {
  const agent = await promotedAgent(t);
  const { url } = await api(t, "old");
  const { stdout } = await promisify(execFile)(process.execPath, [EXAMPLE, "prod/x", url], {
    env: { ...process.env, KEYWARD_SOCKET: agent.socket },
  });
  assert.equal(stdout.trim(), "200 welcome");
  await eventually(() => authFailures(agent).length === 1, 5000, "the example's report");
  assert.match(authFailures(agent)[0].detail, /from service "fallback-http.mjs"/);
});
