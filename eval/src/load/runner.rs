//! Runs one load level: warmup, then requests at a fixed concurrency or at an arrival rate,
//! until a number of requests or a duration, with a progress bar.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::{mpsc, Semaphore};

use super::arrival::{self, ArrivalKind};
use super::client::{self, RequestSpec};
use super::stats::{Level, RequestResult};

/// When a level stops sending.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    /// After this many requests.
    Count(usize),
    /// No new request after this many seconds (requests in flight are awaited and counted).
    Duration(f64),
}

/// Shared by every level of a run.
#[derive(Clone)]
pub struct Runner {
    pub client: reqwest::Client,
    pub spec: Arc<RequestSpec>,
    /// Request `i` of a level sends `prompts[i % len]` (warmup requests come first).
    pub prompts: Arc<Vec<String>>,
    pub progress: bool,
    /// Arrival process in rate mode.
    pub arrival: ArrivalKind,
    /// Cap on requests in flight in rate mode.
    pub max_concurrency: Option<usize>,
    pub seed: u64,
}

/// What a level measured.
#[derive(Debug)]
pub struct LevelRun {
    /// Measured requests, in completion order.
    pub results: Vec<RequestResult>,
    /// Seconds from the first measured request to the end of the last.
    pub duration_s: f64,
    /// Warmup requests sent, and how many failed.
    pub warmup: (usize, usize),
}

impl Runner {
    fn bar(&self, stop: Stop, prefix: String) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let pb = match stop {
            Stop::Count(n) => {
                let pb =
                    ProgressBar::with_draw_target(Some(n as u64), ProgressDrawTarget::stderr());
                if let Ok(style) = ProgressStyle::with_template(
                    "{prefix:>22} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
                ) {
                    pb.set_style(style);
                }
                pb
            }
            Stop::Duration(d) => {
                let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
                if let Ok(style) = ProgressStyle::with_template(&format!(
                    "{{prefix:>22}} {{spinner}} [{{elapsed_precise}} of {d:.0}s] {{pos}} done {{msg}}"
                )) {
                    pb.set_style(style);
                }
                pb
            }
        };
        pb.set_prefix(prefix);
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    }

    /// Runs `warmup` requests (at the level's concurrency, or one at a time in rate mode),
    /// then the measured requests of `level` until `stop`.
    pub async fn run_level(&self, level: Level, stop: Stop, warmup: usize) -> LevelRun {
        let mut warm_failed = 0;
        if warmup > 0 {
            let c = match level {
                Level::Concurrency(c) => c,
                Level::Rate(_) => 1,
            };
            let pb = self.bar(Stop::Count(warmup), format!("warmup ({})", level.label()));
            let (results, _) = self
                .dispatch(Level::Concurrency(c), Stop::Count(warmup), 0, &pb)
                .await;
            pb.finish_and_clear();
            warm_failed = results.iter().filter(|r| !r.ok()).count();
        }
        let pb = self.bar(stop, level.label());
        let (results, duration_s) = self.dispatch(level, stop, warmup, &pb).await;
        pb.finish();
        LevelRun {
            results,
            duration_s,
            warmup: (warmup, warm_failed),
        }
    }

    /// Sends requests per `level` and `stop`, numbering them from `first`; returns the
    /// results and the seconds from the first send to the last completion.
    async fn dispatch(
        &self,
        level: Level,
        stop: Stop,
        first: usize,
        pb: &ProgressBar,
    ) -> (Vec<RequestResult>, f64) {
        let (tx, mut rx) = mpsc::unbounded_channel::<RequestResult>();
        let t0 = Instant::now();
        let sender = {
            let this = self.clone();
            tokio::spawn(async move { this.send_all(level, stop, first, t0, tx).await })
        };
        let mut results = Vec::new();
        let mut failed = 0usize;
        while let Some(r) = rx.recv().await {
            if !r.ok() {
                failed += 1;
                pb.set_message(format!("{failed} failed"));
            }
            pb.inc(1);
            results.push(r);
        }
        let duration = t0.elapsed().as_secs_f64();
        // The sender has returned once every sender of the channel is gone.
        let _ = sender.await;
        (results, duration)
    }

    /// The sending loop; each request task sends its result on `tx`.
    async fn send_all(
        self,
        level: Level,
        stop: Stop,
        first: usize,
        t0: Instant,
        tx: mpsc::UnboundedSender<RequestResult>,
    ) {
        let elapsed_past = |d: f64| t0.elapsed().as_secs_f64() >= d;
        match level {
            Level::Concurrency(c) => {
                let sem = Arc::new(Semaphore::new(c.max(1)));
                let mut i = 0usize;
                loop {
                    match stop {
                        Stop::Count(n) if i >= n => break,
                        Stop::Duration(d) if elapsed_past(d) => break,
                        _ => {}
                    }
                    let Ok(permit) = sem.clone().acquire_owned().await else {
                        break;
                    };
                    if let Stop::Duration(d) = stop {
                        if elapsed_past(d) {
                            break;
                        }
                    }
                    self.spawn_request(first + i, permit.into(), tx.clone());
                    i += 1;
                }
            }
            Level::Rate(rate) => {
                let (count, duration) = match stop {
                    Stop::Count(n) => (Some(n), None),
                    Stop::Duration(d) => (None, Some(d)),
                };
                let offsets = arrival::offsets(self.arrival, rate, self.seed, count, duration);
                let sem = self
                    .max_concurrency
                    .map(|c| Arc::new(Semaphore::new(c.max(1))));
                for (i, off) in offsets.into_iter().enumerate() {
                    tokio::time::sleep_until((t0 + Duration::from_secs_f64(off)).into()).await;
                    let permit = match &sem {
                        Some(s) => match s.clone().acquire_owned().await {
                            Ok(p) => Some(p),
                            Err(_) => break,
                        },
                        None => None,
                    };
                    self.spawn_request(first + i, permit, tx.clone());
                }
            }
        }
    }

    fn spawn_request(
        &self,
        index: usize,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
        tx: mpsc::UnboundedSender<RequestResult>,
    ) {
        let client = self.client.clone();
        let spec = self.spec.clone();
        let prompts = self.prompts.clone();
        tokio::spawn(async move {
            let prompt = match prompts.len() {
                0 => "",
                n => prompts[index % n].as_str(),
            };
            let r = client::send(&client, &spec, prompt).await;
            drop(permit);
            let _ = tx.send(r);
        });
    }
}
