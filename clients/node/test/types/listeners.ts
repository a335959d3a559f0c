// Type tests of KeyHandle's events, checked by test.sh with the examples
// (tsc --strict --noEmit -p examples). Each @ts-expect-error line must be
// a type error: if the events were untyped (listeners taking `any`), the
// directive would be unused, which is itself an error, and the check fails.
import type { DeletedKey, KeyHandle, KeySet, KeywardError } from "@keyward/client";

export function listeners(handle: KeyHandle): void {
  // The right types, inferred and annotated.
  handle.on("change", (next, prev) => {
    const a: KeySet = next;
    const b: KeySet = prev;
    void a.primary.secret.length, b.generation;
  });
  handle.once("deleted", (ev: DeletedKey) => void ev.key);
  handle.on("disconnect", (err: KeywardError | undefined) => void err?.code);
  handle.off("close", () => {});
  handle.emit("change", handle.current, handle.current);

  // @ts-expect-error a change listener gets KeySets, not strings
  handle.on("change", (ks: string) => void ks);
  // @ts-expect-error the second argument is the previous KeySet, not a number
  handle.on("change", (_next: KeySet, prev: number) => void prev);
  // @ts-expect-error disconnect's error may be undefined
  handle.on("disconnect", (err: KeywardError) => void err.code);
  // @ts-expect-error no such event
  handle.on("chnage", () => {});
  // @ts-expect-error emit checks its arguments too
  handle.emit("change", "not a KeySet");
  handle.on("change", (next) => {
    // @ts-expect-error next is a KeySet: it has no `secret` of its own
    void next.secret;
  });
}
