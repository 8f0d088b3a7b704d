//! Continuous batching: which sequences run in the next forward step, and with how many tokens.
//!
//! Every step the scheduler (owned by the engine thread, no shared state):
//! 1. gives each running sequence its next tokens — one for a decode, a chunk of its prompt for a
//!    prefill — interactive sequences first, oldest first, within a per-step token budget
//!    (`max_batch_tokens`), allocating KV blocks as positions are reached; when the pool runs
//!    out it preempts the lowest-priority, youngest running sequence (its blocks are freed and
//!    it is recomputed later, as in vLLM's recompute preemption);
//! 2. admits waiting requests first come, first served (interactive before batch) while the
//!    running set has room (`max_num_seqs`), the budget has tokens left and the pool has blocks
//!    for the first chunk, reusing cached prefix blocks.
//!
//! Running sequences always get their tokens before new ones are admitted, so a stream of new
//! prompts cannot starve decodes; a long prompt is prefilled a budget-sized chunk per step, so it
//! delays others' decodes by at most one step's budget. While an interactive prompt is being
//! prefilled, batch prompts wait, which keeps interactive time to first token close to its idle
//! figure under a background batch.

use std::collections::VecDeque;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use crate::block_manager::{BlockHash, BlockId, BlockManager};
use crate::config::SchedulerConfig;
use crate::engine::{Event, GenerateRequest, Priority};
use crate::model::LogitRows;
use crate::sampling::{Sampler, TokenLogprob};
use crate::script::StreamingConverter;
use crate::stop::StopMatcher;
use crate::tokenizer::StreamDecoder;

/// One request's sequence, owned by the engine thread from submission to its last event.
pub(crate) struct Sequence {
    /// Arrival order (unique, increasing); older sequences have smaller ids.
    pub id: u64,
    pub req: GenerateRequest,
    pub events: UnboundedSender<Event>,
    pub sampler: Sampler,
    pub decoder: StreamDecoder,
    /// Chinese script conversion of the decoded text, before the stop matcher.
    pub script: Option<StreamingConverter>,
    pub stop: StopMatcher,
    /// Prompt logprobs collected so far (entry `i` scores prompt token `i + 1`).
    pub prompt_logprobs: Vec<TokenLogprob>,
    /// Whether the prompt logprobs event has been sent.
    pub prompt_done: bool,
    /// Sampled tokens, in order.
    pub generated: Vec<u32>,
    /// Prompt then generated tokens: everything fed, or to be fed, to the model.
    pub tokens: Vec<u32>,
    /// Leading tokens of `tokens` whose keys/values are in `blocks`.
    pub num_computed: usize,
    /// Block table.
    pub blocks: Vec<BlockId>,
    /// Leading blocks registered in the prefix cache, and the hash of the last of them.
    num_committed: usize,
    last_hash: Option<BlockHash>,
    /// Tokens to feed in the step being planned, and which logits rows they need.
    pub step_tokens: usize,
    pub step_logits: LogitRows,
    pub arrival: Instant,
    pub last_token_at: Option<Instant>,
    /// Whether it has ever been admitted (it then no longer counts as a new submission).
    admitted: bool,
}

impl Sequence {
    /// A new sequence for `req`; `id` must increase with arrival.
    pub fn new(
        id: u64,
        req: GenerateRequest,
        events: UnboundedSender<Event>,
        decoder: StreamDecoder,
        arrival: Instant,
    ) -> Self {
        Self {
            id,
            sampler: Sampler::new(req.sampling.clone()),
            stop: StopMatcher::new(req.stop.clone()),
            script: req.output_script.as_ref().map(|c| c.streaming()),
            decoder,
            tokens: req.prompt_ids.clone(),
            req,
            events,
            prompt_logprobs: Vec::new(),
            prompt_done: false,
            generated: Vec::new(),
            num_computed: 0,
            blocks: Vec::new(),
            num_committed: 0,
            last_hash: None,
            step_tokens: 0,
            step_logits: LogitRows::None,
            arrival,
            last_token_at: None,
            admitted: false,
        }
    }

    fn wants_prompt_logprobs(&self) -> bool {
        self.req.prompt_logprobs.is_some() && !self.prompt_done
    }

    /// Scheduling order: interactive before batch, then arrival.
    fn rank(&self) -> (u8, u64) {
        (u8::from(self.req.priority == Priority::Batch), self.id)
    }
}

/// Counts the engine reports as metrics after each step.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct StepCounts {
    pub preempted: u64,
    pub cancelled: u64,
    pub prefix_queried: u64,
    pub prefix_hit: u64,
}

/// Running and waiting sequences plus the KV block bookkeeping.
pub(crate) struct Scheduler {
    max_num_seqs: usize,
    max_batch_tokens: usize,
    pub blocks: BlockManager,
    /// Waiting sequences per class, oldest first (preempted ones go back to the front).
    interactive: VecDeque<Sequence>,
    batch: VecDeque<Sequence>,
    /// Running sequences in [`Sequence::rank`] order.
    pub running: Vec<Sequence>,
    counts: StepCounts,
}

impl Scheduler {
    /// A scheduler over a pool of `num_blocks` KV blocks.
    pub fn new(cfg: &SchedulerConfig, num_blocks: usize) -> Self {
        Self {
            max_num_seqs: cfg.max_num_seqs,
            max_batch_tokens: cfg.max_batch_tokens,
            blocks: BlockManager::new(num_blocks, cfg.block_size, cfg.prefix_caching),
            interactive: VecDeque::new(),
            batch: VecDeque::new(),
            running: Vec::new(),
            counts: StepCounts::default(),
        }
    }

    /// Queues a new sequence behind the others of its class.
    pub fn enqueue(&mut self, seq: Sequence) {
        match seq.req.priority {
            Priority::Interactive => self.interactive.push_back(seq),
            Priority::Batch => self.batch.push_back(seq),
        }
    }

    pub fn num_waiting(&self) -> usize {
        self.interactive.len() + self.batch.len()
    }

    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.num_waiting() == 0
    }

    /// Counts since the previous call.
    pub fn take_counts(&mut self) -> StepCounts {
        std::mem::take(&mut self.counts)
    }

    /// Drops sequences whose client has gone (receiver dropped), freeing their blocks.
    /// Returns how many waiting sequences that had never run were dropped (they leave the
    /// submission count).
    pub fn drop_cancelled(&mut self) -> usize {
        let mut never_ran = 0;
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].events.is_closed() {
                let seq = self.running.remove(i);
                self.blocks.release(&seq.blocks);
                self.counts.cancelled += 1;
            } else {
                i += 1;
            }
        }
        for queue in [&mut self.interactive, &mut self.batch] {
            let before = queue.len();
            queue.retain(|s| {
                let closed = s.events.is_closed();
                if closed && !s.admitted {
                    never_ran += 1;
                }
                !closed
            });
            self.counts.cancelled += (before - queue.len()) as u64;
        }
        never_ran
    }

    /// Plans the next step: sets `step_tokens` / `step_logits` of the running sequences that
    /// take part (others get 0). Returns the number of newly admitted sequences that had never
    /// run before (for the waiting count).
    pub fn schedule(&mut self) -> usize {
        let bs = self.blocks.block_size();
        let mut budget = self.max_batch_tokens;
        for s in &mut self.running {
            s.step_tokens = 0;
        }
        let mut interactive_prefill = false;
        // 1. Running sequences, in rank order: every decode first, so that a long prefill never
        //    holds back other sequences' next tokens; then prefill chunks from what is left.
        for decodes in [true, false] {
            let mut i = 0;
            while i < self.running.len() && budget > 0 {
                let (remaining, is_batch, done) = {
                    let s = &self.running[i];
                    (
                        s.tokens.len() - s.num_computed,
                        s.req.priority == Priority::Batch,
                        s.step_tokens > 0,
                    )
                };
                let skip = done
                    || (remaining == 1) != decodes
                    || (is_batch && remaining > 1 && interactive_prefill);
                if skip {
                    i += 1;
                    continue;
                }
                let n = remaining.min(budget);
                if !self.grow(i, n, bs) {
                    // `i` itself was preempted (it was the lowest-ranked left).
                    continue;
                }
                let s = &mut self.running[i];
                s.step_tokens = n;
                s.step_logits = step_logits(s, n);
                if remaining > 1 && !is_batch {
                    interactive_prefill = true;
                }
                budget -= n;
                i += 1;
            }
        }
        // 2. Admission, first come first served within each class.
        let mut admitted_new = 0;
        while budget > 0 && self.running.len() < self.max_num_seqs {
            let from_interactive = !self.interactive.is_empty();
            if !from_interactive && interactive_prefill {
                break;
            }
            let queue = if from_interactive {
                &mut self.interactive
            } else {
                &mut self.batch
            };
            let Some(mut seq) = queue.pop_front() else {
                break;
            };
            let fresh = !seq.admitted;
            if !seq.wants_prompt_logprobs() {
                let (ids, hash) = self
                    .blocks
                    .acquire_prefix(&seq.tokens, seq.tokens.len() - 1);
                let stats_before = (ids.len() * bs) as u64;
                self.counts.prefix_hit += stats_before;
                self.counts.prefix_queried += ((seq.tokens.len() - 1) / bs * bs) as u64;
                seq.num_computed = ids.len() * bs;
                seq.num_committed = ids.len();
                seq.last_hash = hash;
                seq.blocks = ids;
            }
            let remaining = seq.tokens.len() - seq.num_computed;
            let n = remaining.min(budget);
            let need = (seq.num_computed + n).div_ceil(bs) - seq.blocks.len();
            if self.blocks.num_allocatable() < need {
                self.blocks.release(&seq.blocks);
                seq.blocks.clear();
                seq.num_computed = 0;
                seq.num_committed = 0;
                seq.last_hash = None;
                let queue = if from_interactive {
                    &mut self.interactive
                } else {
                    &mut self.batch
                };
                queue.push_front(seq);
                break;
            }
            for _ in 0..need {
                match self.blocks.allocate() {
                    Some(b) => seq.blocks.push(b),
                    None => break,
                }
            }
            seq.step_tokens = n;
            seq.step_logits = step_logits(&seq, n);
            if remaining > 1 && from_interactive {
                interactive_prefill = true;
            }
            budget -= n;
            if fresh {
                admitted_new += 1;
                seq.admitted = true;
            }
            let pos = self.running.partition_point(|r| r.rank() < seq.rank());
            self.running.insert(pos, seq);
        }
        admitted_new
    }

    /// Makes sure running sequence `i` has blocks for `n` more tokens, preempting the
    /// lowest-ranked running sequences when the pool is exhausted. Returns false when `i` itself
    /// had to be preempted.
    fn grow(&mut self, i: usize, n: usize, bs: usize) -> bool {
        loop {
            let s = &self.running[i];
            let need = (s.num_computed + n).div_ceil(bs);
            if s.blocks.len() >= need {
                return true;
            }
            if let Some(b) = self.blocks.allocate() {
                self.running[i].blocks.push(b);
                continue;
            }
            let victim = self.running.len() - 1;
            self.preempt(victim);
            if victim == i {
                return false;
            }
        }
    }

    /// Frees running sequence `i`'s blocks and puts it back at the front of its waiting queue
    /// (recompute preemption: its tokens so far are prefilled again when it is readmitted, mostly
    /// from the prefix cache if its blocks have not been evicted meanwhile).
    fn preempt(&mut self, i: usize) {
        let mut seq = self.running.remove(i);
        self.blocks.release(&seq.blocks);
        seq.blocks.clear();
        seq.num_computed = 0;
        seq.num_committed = 0;
        seq.last_hash = None;
        seq.step_tokens = 0;
        self.counts.preempted += 1;
        tracing::debug!(sequence = seq.id, "preempted: KV pool exhausted");
        match seq.req.priority {
            Priority::Interactive => self.interactive.push_front(seq),
            Priority::Batch => self.batch.push_front(seq),
        }
    }

    /// After the forward pass: advances `num_computed` of the scheduled sequences and registers
    /// their newly full blocks in the prefix cache.
    pub fn advance(&mut self) {
        let bs = self.blocks.block_size();
        for s in &mut self.running {
            if s.step_tokens == 0 {
                continue;
            }
            s.num_computed += s.step_tokens;
            while (s.num_committed + 1) * bs <= s.num_computed {
                let b = s.num_committed;
                let hash = self.blocks.commit_full(
                    s.blocks[b],
                    s.last_hash,
                    &s.tokens[b * bs..(b + 1) * bs],
                );
                s.last_hash = Some(hash);
                s.num_committed += 1;
            }
        }
    }

    /// Removes finished running sequences (indices into `running`) and frees their blocks.
    pub fn finish(&mut self, mut indices: Vec<usize>) {
        indices.sort_unstable();
        indices.dedup();
        for i in indices.into_iter().rev() {
            let seq = self.running.remove(i);
            self.blocks.release(&seq.blocks);
        }
    }
}

/// Which logits rows a step of `n` tokens of `s` needs.
fn step_logits(s: &Sequence, n: usize) -> LogitRows {
    let end = s.num_computed + n;
    let prompt_len = s.req.prompt_ids.len();
    if s.wants_prompt_logprobs() && s.num_computed < prompt_len {
        LogitRows::All
    } else if end == s.tokens.len() {
        LogitRows::Last
    } else {
        LogitRows::None
    }
}
