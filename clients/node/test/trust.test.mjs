// The client checks who owns the socket and its directories before its
// first call sends anything (Node has no SO_PEERCRED API: see trust.ts): a
// listener run by another uid gets no byte, and a real agent's socket in a
// directory another uid owns or others can write is refused (grpc-js's own
// reconnections could reach a replacement). The fake listener runs as uid
// 2033, which needs root.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Agent, eventually } from "./agent.mjs";
import { Client, KeywardError, UntrustedSocketError } from "../dist/index.js";

const ATTACKER = 2033;
const OTHER = 2038;
const isRoot = process.getuid() === 0;

// Listens at PATH; counts the bytes received on every connection; once
// nothing happened for 2 s (FIRST_MS before any connection) writes the
// count to OUT and exits. Writes OUT.ready once it listens.
const FAKE_LISTENER = `
const net = require("node:net"), fs = require("node:fs");
const [path, out, firstMs] = process.argv.slice(1);
let total = 0, timer;
const quiet = (ms) => {
  clearTimeout(timer);
  timer = setTimeout(() => { fs.writeFileSync(out, String(total)); process.exit(0); }, ms);
};
net.createServer((c) => {
  quiet(2000);
  c.on("data", (d) => { total += d.length; quiet(2000); });
  c.on("error", () => {});
  c.on("close", () => quiet(2000));
}).listen(path, () => { fs.writeFileSync(out + ".ready", ""); quiet(Number(firstMs)); });
`;

class FakeListener {
  static async start(uid, socket, firstMs = 3000) {
    const out = `${socket}.received`;
    const proc = spawn(process.execPath, ["-e", FAKE_LISTENER, socket, out, String(firstMs)], {
      uid,
      gid: uid,
      cwd: "/",
      stdio: ["ignore", "inherit", "inherit"],
    });
    const exited = new Promise((r) => proc.once("exit", r));
    await eventually(() => {
      if (proc.exitCode !== null) throw new Error(`the fake listener exited with ${proc.exitCode}`);
      return existsSync(`${out}.ready`);
    }, 20_000, "the fake listener");
    return Object.assign(new FakeListener(), { proc, out, exited });
  }

  /** The bytes it received, once it is done. */
  async received() {
    await this.exited;
    return Number(readFileSync(this.out, "utf8"));
  }

  stop() {
    if (this.proc.exitCode === null) this.proc.kill();
  }
}

/** A temp dir others may enter, removed after the test. */
function sharedTmp(t) {
  const d = mkdtempSync(join(tmpdir(), "kwtrust-"));
  chmodSync(d, 0o755);
  t.after(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

function ownedDir(parent, uid) {
  const d = join(parent, "run");
  mkdirSync(d, { mode: 0o755 });
  chmodSync(d, 0o755);
  chownSync(d, uid, uid);
  return d;
}

test("a socket another uid owns gets nothing", async (t) => {
  if (!isRoot) return t.skip(`needs root to run the fake listener as uid ${ATTACKER}`);
  const socket = join(ownedDir(sharedTmp(t), ATTACKER), "keys.sock");
  const fake = await FakeListener.start(ATTACKER, socket);
  t.after(() => fake.stop());

  const client = new Client({ socket, timeoutMs: 3000 });
  const err = await client.get("prod/x").then(() => assert.fail("get succeeded"), (e) => e);
  // A handle gives up at once too, instead of retrying until its timeout.
  const started = Date.now();
  const handleErr = await client.handle("prod/x", { timeoutMs: 10_000 }).then(
    () => assert.fail("handle succeeded"),
    (e) => e,
  );
  const handleTook = Date.now() - started;
  client.close();
  assert.equal(await fake.received(), 0, "the fake listener received bytes");

  assert.ok(err instanceof UntrustedSocketError, err);
  assert.ok(err instanceof KeywardError);
  assert.equal(err.uid, ATTACKER);
  for (const part of [`uid ${ATTACKER}`, "nothing was sent", `KEYWARD_AGENT_UID=${ATTACKER}`, socket]) {
    assert.ok(err.message.includes(part), `${part} missing in: ${err.message}`);
  }
  assert.ok(handleErr instanceof UntrustedSocketError && handleTook < 5000, `${handleErr} after ${handleTook} ms`);
});

test("agentUid trusts that uid", async (t) => {
  if (!isRoot) return t.skip(`needs root to run the fake listener as uid ${ATTACKER}`);
  // The same listener, declared as the agent's uid: the client talks to it
  // (the listener counts the bytes, and answers nothing).
  const socket = join(ownedDir(sharedTmp(t), ATTACKER), "keys.sock");
  const fake = await FakeListener.start(ATTACKER, socket);
  t.after(() => fake.stop());
  const client = new Client({ socket, agentUid: ATTACKER, timeoutMs: 1500 });
  const err = await client.get("prod/x").then(() => assert.fail("get succeeded"), (e) => e);
  client.close();
  assert.ok(!(err instanceof UntrustedSocketError), err);
  assert.ok((await fake.received()) > 0, "a trusted listener received nothing");
});

test("KEYWARD_AGENT_UID must be a number", (t) => {
  const before = process.env.KEYWARD_AGENT_UID;
  t.after(() => (before === undefined ? delete process.env.KEYWARD_AGENT_UID : (process.env.KEYWARD_AGENT_UID = before)));
  process.env.KEYWARD_AGENT_UID = "keyward";
  assert.throws(() => new Client({ socket: "/tmp/x.sock" }), /KEYWARD_AGENT_UID="keyward" is not a uid/);
  delete process.env.KEYWARD_AGENT_UID;
  assert.throws(() => new Client({ socket: "/tmp/x.sock", agentUid: -1 }), KeywardError);
});

test("a directory another uid owns or others can write is refused", async (t) => {
  if (!isRoot) return t.skip("needs root to chown the agent's directory");
  // The real agent serves the socket, but its directory could let someone
  // else put a listener there for grpc-js's next reconnection.
  const root = sharedTmp(t);
  const agent = new Agent(join(root, "state"));
  t.after(() => agent.stop());
  await agent.spawn();
  agent.cli(["put", "prod/x", "--raw"], "sk_behind_a_loose_directory");
  const get = async () => {
    const client = new Client({ socket: agent.socket });
    try {
      return await client.get("prod/x").catch((e) => e);
    } finally {
      client.close();
    }
  };

  chmodSync(root, 0o775);
  let err = await get();
  assert.ok(err instanceof UntrustedSocketError, err);
  assert.ok(err.message.includes(root) && /writable by its group/.test(err.message), err.message);
  assert.ok(!err.message.includes("sk_behind"));

  chmodSync(root, 0o755);
  chownSync(root, OTHER, OTHER);
  err = await get();
  assert.ok(err instanceof UntrustedSocketError, err);
  assert.equal(err.uid, OTHER);
  assert.equal(err.path, root);

  // A root-owned sticky directory (like /tmp) is fine: there only an
  // entry's owner may replace it.
  chownSync(root, 0, 0);
  chmodSync(root, 0o1777);
  const ks = await get();
  assert.ok(!(ks instanceof Error), ks);
  assert.equal(ks.primary.secret.toString(), "sk_behind_a_loose_directory");
  chmodSync(root, 0o755);
});
