// Every event of a KeyHandle, typed: the listeners below get KeySet,
// DeletedKey and KeywardError without annotations, and a listener of the
// wrong type does not compile (see test/types/listeners.ts).
//
// `persistent: true` makes the handle keep the process alive, as a server
// would want; by default a handle lets the program exit once the rest of
// its work is done (like an unref'd timer).
import { Client, type DeletedKey, type KeyHandle, type KeySet, type KeywardError } from "@keyward/client";

function follow(handle: KeyHandle): void {
  handle.on("change", (next, prev) => {
    const from: number = prev.primary.version;
    const to: number = next.primary.version;
    console.log(`${next.key}: v${from} -> v${to} (${next.state}, ${next.reason ?? "?"})`);
  });
  handle.on("deleted", (ev: DeletedKey) => console.log(`${ev.key} was deleted`));
  handle.on("disconnect", (err: KeywardError | undefined) => {
    console.log(`stream ended${err ? `: ${err.message}` : ""}; reconnecting`);
  });
  handle.once("close", () => console.log("closed"));
}

async function main(key: string): Promise<void> {
  const client = new Client();
  const handle = await client.handle(key, { persistent: true, timeoutMs: 5000 });
  follow(handle);
  const current: KeySet = handle.current;
  console.log(`${current.key}: v${current.primary.version}; Ctrl-C to stop`);
  process.once("SIGINT", () => client.close());
}

main(process.argv[2] ?? "prod/billing-api").catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exitCode = 1;
});
