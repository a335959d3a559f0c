// Real keyward agents for the tests: each test starts `keywardd --dev DIR`
// on a fresh temp dir (from KEYWARD_BIN_DIR, set by scripts/test) and
// drives it with the real `keyward` CLI. No mocks.
import { spawn, execFileSync } from "node:child_process";
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const BIN_DIR = resolve(process.env.KEYWARD_BIN_DIR ?? join(import.meta.dirname, "../../../target/debug"));
export const KEYWARDD = join(BIN_DIR, "keywardd");
export const KEYWARD = join(BIN_DIR, "keyward");

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value, for at most `ms`. */
export async function eventually(fn, ms = 5000, what = "condition") {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(25);
  }
}

function accepts(socket) {
  return new Promise((resolve) => {
    const s = connect(socket);
    s.once("connect", () => (s.destroy(), resolve(true)));
    s.once("error", () => resolve(false));
  });
}

export class Agent {
  /**
   * A fresh agent in a new temp dir; `t.after` stops it and removes the dir.
   * `config(dir)` returns the text of a config file (`--config`), which may
   * name paths in the dir.
   */
  static async start(t, { config } = {}) {
    const dir = mkdtempSync(join(tmpdir(), "keyward-node-"));
    // Traversable, so a test can reach keys.sock as another uid.
    chmodSync(dir, 0o755);
    const agent = new Agent(dir);
    if (config) {
      agent.config = join(dir, "keyward.toml");
      writeFileSync(agent.config, config(dir));
    }
    t.after(async () => {
      await agent.stop();
      rmSync(dir, { recursive: true, force: true });
    });
    await agent.spawn();
    return agent;
  }

  constructor(dir) {
    this.dir = dir;
    this.socket = join(dir, "keys.sock");
    this.auditFile = join(dir, "audit.jsonl");
    this.config = undefined;
    this.proc = undefined;
    this.log = "";
  }

  /** Starts keywardd on this dir and waits until keys.sock accepts. */
  async spawn() {
    const args = ["--dev", this.dir, ...(this.config ? ["--config", this.config] : [])];
    const proc = spawn(KEYWARDD, args, { stdio: ["ignore", "pipe", "pipe"] });
    proc.stdout.on("data", (d) => (this.log += d));
    proc.stderr.on("data", (d) => (this.log += d));
    this.proc = proc;
    this.exited = new Promise((r) => proc.once("exit", r));
    await eventually(async () => {
      if (proc.exitCode !== null) throw new Error(`keywardd exited ${proc.exitCode}:\n${this.log}`);
      return existsSync(this.socket) && (await accepts(this.socket));
    }, 10_000, `keywardd to listen on ${this.socket}`);
  }

  /** SIGTERM, and wait for the exit. */
  async stop() {
    if (!this.proc || this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    this.proc.kill("SIGTERM");
    await this.exited;
  }

  async restart() {
    await this.stop();
    await this.spawn();
  }

  /** Runs `keyward --dev DIR ...args`, with `input` on stdin. */
  cli(args, input = "") {
    return execFileSync(KEYWARD, ["--dev", this.dir, ...args], { input, stdio: ["pipe", "pipe", "pipe"] }).toString();
  }

  /** The audit log's records. */
  audit() {
    return readFileSync(this.auditFile, "utf8")
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l));
  }
}

/** Mid-rotation: "new" (v2) promoted to primary, "old" (v1) the fallback. */
export async function promotedAgent(t) {
  const agent = await Agent.start(t);
  agent.cli(["put", "prod/x"], "old");
  agent.cli(["stage", "prod/x"], "new");
  agent.cli(["promote", "prod/x"]);
  return agent;
}
