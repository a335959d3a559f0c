//! `WatchKeys`: the full state of each requested key at once, then the full
//! state after every change, until the client goes away.
//!
//! At subscribe, every key is checked the way a fetch is: a malformed key or
//! an unconfigured environment is `INVALID_ARGUMENT`, a key the policy does
//! not give the caller is `PERMISSION_DENIED`, and a key that does not exist
//! is `NOT_FOUND` (a watch never starts without an initial state to send;
//! create the key first). Each refusal is audited as a `watch` record.
//!
//! Then, per key: one event with reason `initial`, and one event per change
//! with the reason the change was published with (`put`, `staged`,
//! `promoted`, `deleted`, `reloaded`…). A deleted key sends a `KeySet` that
//! holds only the key, and the watch goes on (a later put is sent as usual).
//!
//! Invariants:
//!
//! - Every event is a full `KeySet`, never a diff, and a state equal to the
//!   one last sent for that key is never sent again.
//! - A slow client only ever gets the latest state of a key: the stream
//!   reads latest-value channels ([`crate::watch`]), so it holds at most one
//!   pending state per key and never slows a publisher.
//! - Nothing is sent that is not audited first: each event gets its own
//!   `watch` record (the audit commits them in groups). If the record cannot
//!   be written and the key's environment is fail-closed, the stream ends
//!   with `UNAVAILABLE` instead of sending the key.
//! - Nothing is sent that the current policy does not allow: each event is
//!   checked against the config of the moment, and every config reload
//!   (the config epoch) re-checks all the stream's keys, ending the stream
//!   with `PERMISSION_DENIED` when the caller lost any of them.
//! - The subscriber's delivered generation moves when tonic takes the event
//!   from the stream, not before.
//! - A caller has at most `[limits] max_watches_per_uid` streams open, and
//!   the agent `max_watches`: past either, `RESOURCE_EXHAUSTED` naming the
//!   setting.
//! - A stream evicted for taking nothing within its key's propagation
//!   timeout ([`crate::watch`], [`crate::agent::watch_evict`]) sends nothing more:
//!   its next poll ends it with `ABORTED`, saying why. (hyper takes the next
//!   event only once the one before found room in the client's HTTP/2
//!   window, so a client that never opens it gets the status only if it
//!   does.)
//! - The stream costs no task of its own: it is polled by the call's task in
//!   the server. While it waits it holds only its channels' receivers; the
//!   future that audits and builds an event exists only while one is being
//!   delivered. The whole subscription ends (and leaves the registry) when
//!   tonic drops the stream because the client went away.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio_stream::wrappers::WatchStream;
use tokio_stream::Stream;
use tonic::Status;

use super::peer::Peer;
use crate::agent::caller::Caller;
use crate::agent::error::ApiError;
use crate::agent::serve::Via;
use crate::agent::{Agent, Right};
use crate::audit::{Event, Outcome};
use crate::keyset::KeySetState;
use crate::proto;
use crate::secret::KeyRef;
use crate::watch::ClientKind;
use crate::watch::{same_state, Eviction, Reason, Subscription, WatchCaps};
use crate::wire::shown_key;
use crate::wire::ToWire;

/// Most keys one `WatchKeys` call may name.
pub const MAX_KEYS_PER_WATCH: usize = 1024;

/// Checks the request, subscribes and reads the initial states; returns the
/// stream of events. Refusals are audited.
pub async fn watch(
    agent: Arc<Agent>,
    peer: Arc<Peer>,
    kind: ClientKind,
    req: proto::WatchKeysRequest,
) -> Result<WatchEvents, ApiError> {
    if let Some(limit) = &peer.over_limit {
        return Err(ApiError::ResourceExhausted(limit.clone()));
    }
    let caller = peer.caller.clone();
    let refuse = |key: Option<String>, outcome: Outcome, error: ApiError| {
        let (agent, caller) = (agent.clone(), caller.clone());
        async move { Err(agent.refuse(Event::Watch, &caller, key, outcome, error).await) }
    };
    if req.keys.is_empty() || req.keys.len() > MAX_KEYS_PER_WATCH {
        let msg = format!(
            "WatchKeys takes 1 to {MAX_KEYS_PER_WATCH} keys, got {}: name the keys to watch (split a longer list over several calls)",
            req.keys.len()
        );
        return refuse(None, Outcome::InvalidArgument, ApiError::InvalidArgument(msg)).await;
    }
    let mut keys: Vec<KeyRef> = Vec::with_capacity(req.keys.len());
    for k in &req.keys {
        match agent.key_ref(Some(k)) {
            Ok(key) if keys.contains(&key) => {}
            Ok(key) => keys.push(key),
            Err(e) => return refuse(Some(shown_key(k)), Outcome::InvalidArgument, e).await,
        }
    }

    // The epoch is read before the policy, so that a reload that lands
    // after this check is seen by the stream.
    let epoch = agent.config_epoch();
    for key in &keys {
        agent.check_read(Event::Watch, &caller, key).await?;
    }

    // Subscribe first, then read: see the invariants in crate::watch.
    let limits = &agent.config().limits;
    let caps = WatchCaps {
        per_uid: limits.max_watches_per_uid,
        total: limits.max_watches,
    };
    let connection = peer.connection.clone();
    let close: crate::watch::CloseConnection = Arc::new(move || connection.close());
    let subscription = match agent.subscribe(&keys, &caller, kind, caps, close) {
        Ok(s) => s,
        Err(refused) => {
            // Not audited: the caller may read these keys, and a flood of
            // refusals must not become a flood of records.
            tracing::debug!(uid = caller.uid, pid = caller.pid, "{refused}");
            return Err(ApiError::ResourceExhausted(refused.to_string()));
        }
    };
    let mut initial = Vec::with_capacity(keys.len());
    for key in &keys {
        match agent.current(key) {
            Some(state) => initial.push(state),
            None => {
                let msg = format!(
                    "key {key} does not exist: create it with `keyward put {key}` before watching it (WatchKeys starts only on existing keys)"
                );
                return refuse(Some(key.to_string()), Outcome::NotFound, ApiError::NotFound(msg)).await;
            }
        }
    }
    let session = Session {
        agent,
        caller,
        subscription,
        epoch: WatchStream::from_changes(epoch),
        sent: initial.into_iter().map(Sent::State).collect(),
        initial_sent: 0,
    };
    Ok(WatchEvents {
        session: Some(session),
        delivering: None,
    })
}

/// What was last sent for one key.
enum Sent {
    State(Arc<KeySetState>),
    Deleted,
}

/// An event ready to hand to tonic.
struct Delivery {
    event: proto::KeyEvent,
    /// Which key it is for, the publish it comes from, and the state it
    /// carries (`None`: deleted).
    index: usize,
    seq: u64,
    state: Option<Arc<KeySetState>>,
}

/// Audits and builds one event (`None`: nothing to send after all), or says
/// why the stream must end.
type Delivering = Pin<Box<dyn Future<Output = Result<Option<Delivery>, Status>> + Send>>;

/// The state of one `WatchKeys` call.
struct Session {
    agent: Arc<Agent>,
    caller: Arc<Caller>,
    subscription: Subscription,
    /// Config swaps since the policy was checked at subscribe.
    epoch: WatchStream<u64>,
    /// Per key (parallel to `subscription.keys()`): the last state sent, or
    /// before the initial event, the initial state to send.
    sent: Vec<Sent>,
    /// How many initial events were sent.
    initial_sent: usize,
}

impl Session {
    /// What to deliver next, if anything is ready; `Err` ends the stream.
    fn poll_next_delivery(&mut self, cx: &mut Context<'_>) -> Poll<Result<Delivering, Status>> {
        if let Poll::Ready(eviction) = self.subscription.poll_evicted(cx) {
            return Poll::Ready(Err(evicted(&eviction)));
        }
        if self.initial_sent < self.sent.len() {
            let index = self.initial_sent;
            self.initial_sent += 1;
            let Sent::State(state) = &self.sent[index] else {
                unreachable!("initial states are all present")
            };
            let seq = self.subscription.initial_seq(index);
            return Poll::Ready(Ok(self.deliver(index, seq, Some(state.clone()), Reason::Initial)));
        }
        // A reload first: nothing more goes out under a policy that no
        // longer allows it. The check may verify the caller's process (a
        // new grant may name executables), so it runs as a delivery.
        let mut reloaded = false;
        while let Poll::Ready(epoch) = Pin::new(&mut self.epoch).poll_next(cx) {
            if epoch.is_none() {
                return Poll::Ready(Err(shutting_down()));
            }
            reloaded = true;
        }
        if reloaded {
            let (agent, caller) = (self.agent.clone(), self.caller.clone());
            let keys = self.subscription.keys().to_vec();
            return Poll::Ready(Ok(Box::pin(async move {
                for key in keys {
                    if agent.allows(&caller, &key, Right::Read).await.is_err() {
                        let lost = agent.watch_access_lost(&caller, &key, "was removed by a config reload");
                        return Err(lost.await.into());
                    }
                }
                Ok(None)
            })));
        }
        loop {
            let Some((index, published)) = ready!(self.subscription.poll_changed(cx)) else {
                return Poll::Ready(Err(shutting_down()));
            };
            let unchanged = match (&self.sent[index], &published.state) {
                (Sent::State(last), Some(new)) => same_state(last, new),
                (Sent::Deleted, None) => true,
                _ => false,
            };
            if !unchanged {
                return Poll::Ready(Ok(self.deliver(
                    index,
                    published.seq,
                    published.state,
                    published.reason,
                )));
            }
            self.subscription.taken(index, published.seq, None);
        }
    }

    /// The future that checks, audits and builds the event for key `index`
    /// in `state` (`None`: deleted), from publish `seq`.
    fn deliver(&self, index: usize, seq: u64, state: Option<Arc<KeySetState>>, reason: Reason) -> Delivering {
        let agent = self.agent.clone();
        let caller = self.caller.clone();
        let key = self.subscription.keys()[index].clone();
        Box::pin(async move {
            let via = Via::Watch {
                reason,
                state: state.as_ref(),
            };
            agent.serve(&caller, &key, via).await?;
            let key_set = match &state {
                Some(s) => s.to_proto(),
                None => proto::KeySet {
                    key: Some(key.to_proto()),
                    ..Default::default()
                },
            };
            Ok(Some(Delivery {
                event: proto::KeyEvent {
                    key_set: Some(key_set),
                    reason: reason.as_str().to_owned(),
                },
                index,
                seq,
                state,
            }))
        })
    }

    /// Records what was handed to tonic.
    fn delivered(&mut self, index: usize, seq: u64, state: Option<Arc<KeySetState>>) {
        self.subscription
            .taken(index, seq, state.as_ref().map(|s| s.generation));
        self.sent[index] = match state {
            Some(s) => Sent::State(s),
            None => Sent::Deleted,
        };
    }
}

/// The status that ends an evicted stream.
fn evicted(e: &Eviction) -> Status {
    let waiting = match e.waiting_generation {
        Some(g) => format!("generation {g} of {}", e.key),
        None => format!("the deletion of {}", e.key),
    };
    Status::aborted(format!(
        "this watch was ended by keywardd: it took no event for {} while {waiting} waited for it (the key's propagation timeout is {}), so rotations no longer wait for it. Read the stream as events arrive (a client that stops reading holds up every rotation of its keys), then watch again",
        humantime::format_duration(round_ms(e.waited)),
        humantime::format_duration(e.timeout)
    ))
}

/// `d` to whole milliseconds, for messages.
fn round_ms(d: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_millis(d.as_millis() as u64)
}

fn shutting_down() -> Status {
    Status::unavailable("keywardd is shutting down: watch again once it is back")
}

/// The `WatchKeys` response stream. Ends after an error; dropping it ends
/// the subscription.
pub struct WatchEvents {
    /// `None` once the stream has ended.
    session: Option<Session>,
    /// The event being audited and built, if any.
    delivering: Option<Delivering>,
}

impl Stream for WatchEvents {
    type Item = Result<proto::KeyEvent, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(session) = &mut this.session else {
            return Poll::Ready(None);
        };
        let outcome = loop {
            match &mut this.delivering {
                Some(delivering) => {
                    let outcome = ready!(delivering.as_mut().poll(cx));
                    this.delivering = None;
                    match outcome {
                        Ok(None) => continue,
                        Ok(Some(delivery)) => break Ok(delivery),
                        Err(status) => break Err(status),
                    }
                }
                None => match ready!(session.poll_next_delivery(cx)) {
                    Ok(delivering) => this.delivering = Some(delivering),
                    Err(status) => break Err(status),
                },
            }
        };
        match outcome {
            Ok(Delivery {
                event,
                index,
                seq,
                state,
            }) => {
                // tonic has the event as soon as this returns.
                session.delivered(index, seq, state);
                Poll::Ready(Some(Ok(event)))
            }
            Err(status) => {
                // The stream is over: drop the subscription now.
                this.session = None;
                Poll::Ready(Some(Err(status)))
            }
        }
    }
}
