// A KeyHandle does not keep the process alive (unless persistent: true):
// child processes open a handle, never close it, and must exit by
// themselves; one with a persistent handle must not.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import { Agent, eventually, sleep } from "./agent.mjs";

const DIST = join(import.meta.dirname, "../dist/index.js");

/** Starts `node -e script` against `agent`; collects its output lines and exit. */
function child(t, agent, script) {
  const proc = spawn(process.execPath, ["-e", `const { Client } = require(${JSON.stringify(DIST)});\n${script}`], {
    env: { ...process.env, KEYWARD_SOCKET: agent.socket },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const c = { proc, lines: [], stderr: "", exit: undefined, started: performance.now(), exitedAt: undefined };
  let buf = "";
  proc.stdout.on("data", (d) => {
    buf += d;
    const parts = buf.split("\n");
    buf = parts.pop();
    c.lines.push(...parts);
  });
  proc.stderr.on("data", (d) => (c.stderr += d));
  c.exited = new Promise((r) =>
    proc.once("exit", (code, signal) => {
      c.exit = { code, signal };
      c.exitedAt = performance.now();
      r(c.exit);
    }),
  );
  t.after(() => {
    if (c.exit === undefined) proc.kill("SIGKILL");
  });
  return c;
}

/** Waits for `c` to exit by itself within `ms`; fails (and kills it) otherwise. */
async function exitsWithin(c, ms) {
  const timer = sleep(ms).then(() => "still running");
  const r = await Promise.race([c.exited, timer]);
  if (r === "still running") {
    c.proc.kill("SIGKILL");
    assert.fail(`the process did not exit within ${ms} ms (output: ${JSON.stringify(c.lines)}, ${c.stderr})`);
  }
  assert.deepEqual(c.exit, { code: 0, signal: null }, c.stderr);
  return c.exitedAt - c.started;
}

test("a process with an open handle exits by itself", async (t) => {
  const agent = await Agent.start(t);
  agent.cli(["put", "prod/x"], "one");
  // No close(): the handle is left open. The await is not cut short: the
  // handle holds the process until its first KeySet.
  const c = child(t, agent, `
    new Client().handle("prod/x").then((h) => console.log("v" + h.current.primary.version));
  `);
  const ms = await exitsWithin(c, 10_000);
  assert.deepEqual(c.lines, ["v1"]);
  t.diagnostic(`exited by itself ${Math.round(ms)} ms after start`);
});

test("an open handle keeps following the key while the process has other work, then lets it exit", async (t) => {
  const agent = await Agent.start(t);
  agent.cli(["put", "prod/x"], "one");
  // Other work: a 2 s timer. Meanwhile the key is rotated and the agent
  // restarted; the handle follows, and the process exits when the timer is
  // done, with the handle still open (reconnecting, its timers unref'd).
  const c = child(t, agent, `
    (async () => {
      const h = await new Client().handle("prod/x");
      h.on("change", (ks) => console.log("change v" + ks.primary.version));
      h.on("disconnect", () => console.log("disconnect"));
      console.log("ready");
      setTimeout(() => console.log("done"), 2000);
    })();
  `);
  await eventually(() => c.lines.includes("ready"), 10_000, "the child's handle");
  agent.cli(["stage", "prod/x"], "two");
  agent.cli(["promote", "prod/x"]);
  await eventually(() => c.lines.includes("change v2"), 5000, "the change in the child");
  await agent.stop();
  await eventually(() => c.lines.includes("disconnect"), 5000, "the child's disconnect");
  await exitsWithin(c, 10_000);
  assert.equal(c.lines.at(-1), "done");
});

test("a persistent handle keeps the process alive until it is closed", async (t) => {
  const agent = await Agent.start(t);
  agent.cli(["put", "prod/x"], "one");
  const c = child(t, agent, `
    new Client().handle("prod/x", { persistent: true }).then((h) => {
      console.log("ready " + h.persistent);
      h.on("change", (ks) => {
        console.log("change " + ks.state);
        h.close();
      });
    });
  `);
  await eventually(() => c.lines.includes("ready true"), 10_000, "the child's handle");
  await sleep(1500);
  assert.equal(c.exit, undefined, `the child exited: ${JSON.stringify(c.lines)} ${c.stderr}`);
  agent.cli(["stage", "prod/x"], "two");
  await exitsWithin(c, 10_000);
  assert.deepEqual(c.lines, ["ready true", "change STAGED"]);
});
