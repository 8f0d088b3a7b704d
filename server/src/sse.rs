//! Server-sent events: `data: {chunk}\n\n` ... `data: [DONE]\n\n`.
//!
//! [`stream_response`] merges the engine receivers of all choices and turns their events into
//! chunks with a [`ChunkMaker`]. The SSE body owns the receivers: when the client disconnects,
//! the body is dropped, the receivers with it, and the engine cancels those sequences.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, SelectAll, StreamExt};
use govlm_inference::engine::Event;
use serde::Serialize;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::error::ApiError;

/// The terminal SSE payload.
pub const DONE: &str = "[DONE]";

/// Turns engine events into serialised chunks for one streamed response.
pub trait ChunkMaker: Send + 'static {
    /// Chunks sent before any event (e.g. the chat role deltas).
    fn start(&mut self) -> Result<Vec<String>, ApiError>;
    /// Chunks for one event of choice `choice` (index into the receivers).
    fn event(&mut self, choice: usize, event: Event) -> Result<Vec<String>, ApiError>;
    /// Chunks after every choice finished (e.g. the usage chunk).
    fn end(&mut self) -> Result<Vec<String>, ApiError>;
}

/// Serialises a chunk to its `data:` payload.
pub fn to_data<T: Serialize>(chunk: &T) -> Result<String, ApiError> {
    serde_json::to_string(chunk)
        .map_err(|e| ApiError::internal(format!("cannot serialise a chunk: {e}")))
}

type Merged = SelectAll<stream::BoxStream<'static, (usize, Event)>>;

struct StreamState<M> {
    events: Merged,
    maker: M,
    pending: VecDeque<String>,
    finished: Vec<bool>,
    done: bool,
}

impl<M: ChunkMaker> StreamState<M> {
    fn fail(&mut self, e: ApiError) {
        tracing::warn!(message = %e.message, "error while streaming");
        self.pending.push_back(e.to_json().to_string());
        self.finish_stream();
    }

    fn finish_stream(&mut self) {
        self.pending.push_back(DONE.to_string());
        self.done = true;
        // Drop the receivers now: cancels whatever still runs.
        self.events = SelectAll::new();
    }

    fn push(&mut self, r: Result<Vec<String>, ApiError>) {
        match r {
            Ok(chunks) => self.pending.extend(chunks),
            Err(e) => self.fail(e),
        }
    }

    /// Advances until at least one payload is pending or the stream is over.
    async fn step(&mut self) {
        if self.done {
            return;
        }
        if !self.finished.is_empty() && self.finished.iter().all(|f| *f) {
            let r = self.maker.end();
            self.push(r);
            if !self.done {
                self.finish_stream();
            }
            return;
        }
        match self.events.next().await {
            Some((i, ev)) => {
                if matches!(ev, Event::Finished { .. }) {
                    if let Some(f) = self.finished.get_mut(i) {
                        *f = true;
                    }
                }
                let is_error = matches!(ev, Event::Error(_));
                let r = self.maker.event(i, ev);
                self.push(r);
                if is_error && !self.done {
                    self.finish_stream();
                }
            }
            None => self.fail(ApiError::engine_stopped()),
        }
    }
}

/// Merges the receivers (index = choice) and returns the SSE body as a stream of payloads.
pub fn payloads<M: ChunkMaker>(
    maker: M,
    receivers: Vec<UnboundedReceiver<Event>>,
) -> impl futures::Stream<Item = String> + Send + 'static {
    let finished = vec![false; receivers.len()];
    let events: Merged = stream::select_all(receivers.into_iter().enumerate().map(|(i, rx)| {
        UnboundedReceiverStream::new(rx)
            .map(move |e| (i, e))
            .boxed()
    }));
    let mut state = StreamState {
        events,
        maker,
        pending: VecDeque::new(),
        finished,
        done: false,
    };
    let start = state.maker.start();
    state.push(start);
    stream::unfold(state, |mut st| async move {
        loop {
            if let Some(p) = st.pending.pop_front() {
                return Some((p, st));
            }
            if st.done {
                return None;
            }
            st.step().await;
        }
    })
}

/// The streamed HTTP response (`text/event-stream`).
pub fn stream_response<M: ChunkMaker>(
    maker: M,
    receivers: Vec<UnboundedReceiver<Event>>,
) -> Response {
    let body = payloads(maker, receivers).map(|p| Ok::<_, Infallible>(SseEvent::default().data(p)));
    Sse::new(body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use govlm_inference::engine::FinishReason;
    use tokio::sync::mpsc::unbounded_channel;

    struct Echo;
    impl ChunkMaker for Echo {
        fn start(&mut self) -> Result<Vec<String>, ApiError> {
            Ok(vec!["start".into()])
        }
        fn event(&mut self, choice: usize, event: Event) -> Result<Vec<String>, ApiError> {
            Ok(match event {
                Event::Delta { text, .. } => vec![format!("{choice}:{text}")],
                Event::Finished { .. } => vec![format!("{choice}:fin")],
                Event::Error(m) => return Err(ApiError::internal(m)),
                Event::PromptLogprobs(_) => vec![],
            })
        }
        fn end(&mut self) -> Result<Vec<String>, ApiError> {
            Ok(vec!["usage".into()])
        }
    }

    fn fin() -> Event {
        Event::Finished {
            reason: FinishReason::Stop,
            prompt_tokens: 1,
            completion_tokens: 1,
        }
    }

    #[tokio::test]
    async fn merges_choices_and_ends_with_done() {
        let (tx0, rx0) = unbounded_channel();
        let (tx1, rx1) = unbounded_channel();
        tx0.send(Event::Delta {
            text: "a".into(),
            tokens: vec![],
        })
        .unwrap();
        tx0.send(fin()).unwrap();
        tx1.send(fin()).unwrap();
        // Senders stay alive: the stream must still end once every choice finished.
        let out: Vec<String> = payloads(Echo, vec![rx0, rx1]).collect().await;
        assert_eq!(out.first().map(String::as_str), Some("start"));
        assert!(out.contains(&"0:a".to_string()) && out.contains(&"1:fin".to_string()));
        assert_eq!(
            &out[out.len() - 2..],
            &["usage".to_string(), DONE.to_string()]
        );
        drop((tx0, tx1));
    }

    #[tokio::test]
    async fn engine_error_becomes_error_event() {
        let (tx, rx) = unbounded_channel();
        tx.send(Event::Error("boom".into())).unwrap();
        let out: Vec<String> = payloads(Echo, vec![rx]).collect().await;
        assert_eq!(out.len(), 3, "{out:?}");
        let err: serde_json::Value = serde_json::from_str(&out[1]).unwrap();
        assert_eq!(err["error"]["message"], "boom");
        assert_eq!(out[2], DONE);
    }

    #[tokio::test]
    async fn closed_receiver_is_engine_stopped() {
        let (tx, rx) = unbounded_channel::<Event>();
        drop(tx);
        let out: Vec<String> = payloads(Echo, vec![rx]).collect().await;
        let err: serde_json::Value = serde_json::from_str(&out[1]).unwrap();
        assert_eq!(err["error"]["code"], "engine_unavailable");
    }
}
