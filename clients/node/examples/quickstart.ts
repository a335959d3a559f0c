// The README's example: a key from the agent, kept current by a handle.
//   KEYWARD_SOCKET=/tmp/kw/keys.sock npx tsx examples/quickstart.ts   (or compile with tsc)
import { Client, type KeySet } from "@keyward/client";

async function main(): Promise<void> {
  const client = new Client(); // socket: $KEYWARD_SOCKET, else /run/keyward/keys.sock
  const handle = await client.handle("prod/billing-api"); // follows rotations in the background
  handle.on("change", (next: KeySet, prev: KeySet) => {
    console.log(`rotated: v${prev.primary.version} -> v${next.primary.version}`);
  });
  const res = await client.callWithFallback(handle, (secret) =>
    fetch("https://api.example.com/v1/me", { headers: { authorization: `Bearer ${secret.toString()}` } }),
  );
  console.log(res.status, handle.current.primary.fingerprint); // never print the secret
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exitCode = 1;
});
