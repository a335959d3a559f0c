// Who may serve the agent's socket, checked before the first call sends
// anything. The server must run as root, as this process's effective uid
// (`keywardd --dev` run by the same user), or as the agent's uid (the
// `agentUid` option, else KEYWARD_AGENT_UID).
//
// Node has no API for a Unix socket's peer credentials (SO_PEERCRED), and
// grpc-js makes its own connections, so the check is by ownership: with
// symlinks resolved, the socket file must be owned by a trusted uid (the
// uid that bound it), and every directory from / down to it must be owned
// by a trusted uid and writable by no one else (a root-owned sticky
// directory such as /tmp is fine: there only an entry's owner may remove or
// rename it). Then only a trusted uid can have put a listener at that path,
// or can put one there later, so grpc-js's own connections, reconnections
// after an agent restart included, reach a socket a trusted uid placed. The
// channel is made on the resolved path, so a symlink changed later leads
// nowhere else.
import { promises as fs } from "node:fs";
import * as path from "node:path";
import { KeywardError, UntrustedSocketError, agentUnavailable, socketPermissionDenied } from "./errors";

/** S_ISVTX, the sticky bit (not in fs.constants). */
const STICKY = 0o1000;

/** The environment variable naming the uid keywardd runs as. */
export const AGENT_UID_ENV = "KEYWARD_AGENT_UID";

/** `agentUid` if given, else KEYWARD_AGENT_UID (unset or empty: none). */
export function agentUidFrom(option: number | undefined): number | undefined {
  if (option !== undefined) {
    if (!Number.isInteger(option) || option < 0 || option >= 2 ** 32) {
      throw new KeywardError(`agentUid ${String(option)} is not a uid: pass the number keywardd runs as`);
    }
    return option;
  }
  const value = process.env[AGENT_UID_ENV] ?? "";
  if (value === "") return undefined;
  const uid = /^\s*\d+\s*$/.test(value) ? Number(value) : NaN;
  if (!Number.isInteger(uid) || uid >= 2 ** 32) {
    throw new KeywardError(
      `${AGENT_UID_ENV}=${JSON.stringify(value)} is not a uid: set it to the number keywardd runs as (e.g. ${AGENT_UID_ENV}=998), or unset it`,
    );
  }
  return uid;
}

function euid(): number {
  return process.geteuid?.() ?? -1;
}

function trustedNames(agentUid: number | undefined): string {
  const names = ["root"];
  if (euid() !== 0) names.push(`this user (uid ${euid()})`);
  names.push(agentUid !== undefined ? `${AGENT_UID_ENV} (${agentUid})` : `${AGENT_UID_ENV} (not set)`);
  return `${names.slice(0, -1).join(", ")} nor ${names[names.length - 1]}`;
}

function fix(uid: number): string {
  return (
    "Check that socket and its directory (whoever can write there can stand in for keywardd); " +
    `if keywardd really runs as uid ${uid}, set ${AGENT_UID_ENV}=${uid} (or pass agentUid: ${uid})`
  );
}

function errno(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | undefined)?.code;
}

/**
 * Checks who owns `socket` and its directories (see above); resolves to the
 * path with symlinks resolved, for the channel. Rejects with
 * UntrustedSocketError, AgentUnavailableError (no socket) or
 * PermissionDeniedError (a directory closed to this user).
 */
export async function checkSocket(socket: string, agentUid: number | undefined): Promise<string> {
  const trusted = new Set([0, euid(), ...(agentUid !== undefined ? [agentUid] : [])]);
  let real: string;
  try {
    real = await fs.realpath(socket);
  } catch (e) {
    throw unreachable(socket, e);
  }
  const parts = real.split(path.sep).filter(Boolean);
  const chain = ["/", ...parts.map((_, i) => "/" + parts.slice(0, i + 1).join("/"))];
  for (const [i, p] of chain.entries()) {
    let st;
    try {
      st = await fs.lstat(p);
    } catch (e) {
      throw unreachable(socket, e);
    }
    const isSocket = i === chain.length - 1;
    if (st.isSymbolicLink()) {
      throw new UntrustedSocketError(
        `refusing the keyward socket ${socket}: ${p} became a symlink while it was checked; nothing was sent. Check who can change that directory`,
        { uid: st.uid, path: p },
      );
    }
    if (!trusted.has(st.uid)) {
      const what = isSocket
        ? `the socket file ${p} is owned by uid ${st.uid} (the uid that created it; Node cannot ask the kernel who serves a socket)`
        : `the directory ${p} is owned by uid ${st.uid}`;
      throw new UntrustedSocketError(
        `refusing the keyward socket ${socket}: ${what}, which is neither ${trustedNames(agentUid)}; ` +
          `that uid can serve or replace the socket, so nothing was sent. ${fix(st.uid)}`,
        { uid: st.uid, path: p },
      );
    }
    if (isSocket || !st.isDirectory()) continue;
    const mode = st.mode & 0o7777;
    if (mode & 0o022 && !(st.uid === 0 && mode & STICKY)) {
      throw new UntrustedSocketError(
        `refusing the keyward socket ${socket}: the directory ${p} is writable by ${mode & 0o002 ? "all users" : "its group"} ` +
          `(mode ${mode.toString(8).padStart(4, "0")}), so another user could put its own listener at the socket's path; ` +
          `nothing was sent. Remove that write permission (chmod go-w ${p}) or move the socket`,
        { path: p },
      );
    }
  }
  return real;
}

function unreachable(socket: string, e: unknown): KeywardError {
  const code = errno(e);
  if (code === "EACCES" || code === "EPERM") return socketPermissionDenied(socket, { cause: e });
  return agentUnavailable(socket, code === "ENOENT" ? "no socket at that path" : `cannot check the socket: ${code ?? String(e)}`, {
    cause: e,
  });
}
