//! Bookkeeping for a paged KV cache with prefix caching.
//!
//! The KV pool holds `num_blocks` blocks of `block_size` token slots each. This module decides
//! which block ids a sequence uses; it never touches tensors. A block is in exactly one of three
//! states:
//!
//! - **free**: no reference, no cached content; kept on a free list.
//! - **used**: referenced by at least one sequence (reference count > 0); it may or may not be
//!   registered in the prefix cache.
//! - **evictable**: no reference but still registered in the prefix cache, so a later request with
//!   the same prefix can revive it. Evictable blocks are kept in LRU order and are reused by
//!   [`BlockManager::allocate`] when the free list is empty.
//!
//! Prefix caching identifies a *full* block by a hash chain: `hash(parent hash or seed, tokens)`,
//! so a block's hash covers its own tokens and every token before it. Hash collisions are guarded
//! against: a cache hit is only accepted when the stored parent hash and tokens of the cached block
//! equal the query.
//!
//! Typical scheduler flow for one sequence:
//! 1. `acquire_prefix(prompt, prompt.len() - 1)` -> the first blocks (already filled) and the hash
//!    of the last one; skip computing those `ids.len() * block_size` tokens.
//! 2. `allocate()` a block whenever the sequence needs room for more tokens.
//! 3. `commit_full(block, parent, tokens)` each time a block has been completely written, in
//!    order, passing the hash returned for the previous block as `parent`.
//! 4. `release(&blocks)` with the sequence's blocks in sequence order when it finishes or is
//!    preempted.
//!
//! All operations cost O(1) or O(blocks touched) (LRU operations are O(log n) in the number of
//! evictable blocks). No operation panics on any input: invalid block ids or releasing a block
//! without a reference are ignored and counted (see [`BlockManager::num_invalid_ops`]).

use std::collections::{BTreeMap, HashMap};

/// Index of a block in the KV pool (`0..num_blocks`).
pub type BlockId = u32;

/// Hash identifying a full block by its tokens and every token before it (hash chain).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct BlockHash(pub u64);

/// Cumulative prefix-cache statistics, in tokens.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PrefixCacheStats {
    /// Tokens looked up by `acquire_prefix` (each query's limit rounded down to whole blocks).
    pub queried_tokens: u64,
    /// Tokens found in the cache (whole blocks).
    pub hit_tokens: u64,
}

impl PrefixCacheStats {
    /// `hit_tokens / queried_tokens`, 0.0 when nothing was queried.
    pub fn hit_rate(&self) -> f64 {
        if self.queried_tokens == 0 {
            0.0
        } else {
            self.hit_tokens as f64 / self.queried_tokens as f64
        }
    }
}

/// Result of [`BlockManager::probe_prefix`]: what `acquire_prefix` would return, without side
/// effects.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PrefixProbe {
    /// Number of leading whole blocks found in the cache.
    pub hit_blocks: usize,
    /// How many of those are currently evictable (acquiring them removes them from
    /// `num_allocatable`).
    pub evictable_blocks: usize,
}

/// Seed standing in for the parent hash of a sequence's first block.
const HASH_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// The block hash chain: a stable 64-bit hash (FNV-1a over little-endian bytes followed by a
/// splitmix64 finalizer) of the parent hash (or a fixed seed for a first block) and the block's
/// tokens. Stable across processes and Rust versions.
pub fn hash_block(parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = FNV_OFFSET;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(FNV_PRIME);
        }
    };
    // Tag distinguishes "no parent" from a parent whose hash happens to equal the seed.
    match parent {
        Some(p) => {
            feed(&[1]);
            feed(&p.0.to_le_bytes());
        }
        None => {
            feed(&[0]);
            feed(&HASH_SEED.to_le_bytes());
        }
    }
    feed(&(tokens.len() as u64).to_le_bytes());
    for t in tokens {
        feed(&t.to_le_bytes());
    }
    // splitmix64 finalizer for better avalanche of the low bits used by HashMap.
    let mut z = h;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    BlockHash(z ^ (z >> 31))
}

/// Per-block bookkeeping.
#[derive(Debug, Default, Clone)]
struct BlockMeta {
    /// Number of sequences referencing this block.
    refs: u32,
    /// Hash under which this block is registered in the prefix cache (`cache[hash] == id`).
    hash: Option<BlockHash>,
    /// Parent hash given at commit (collision guard); meaningful only while `hash` is Some.
    parent: Option<BlockHash>,
    /// Tokens given at commit (collision guard); meaningful only while `hash` is Some.
    tokens: Vec<u32>,
    /// LRU key while evictable.
    lru_tick: Option<u64>,
    /// True while on the free list.
    free: bool,
}

/// Reference-counted block allocator for a paged KV cache, with an LRU prefix cache.
///
/// Invariants (checked by the tests): every block is exactly one of free / used / evictable;
/// `num_used() + num_allocatable() == num_blocks()`; `num_allocatable() == free + num_cached()`.
#[derive(Debug)]
pub struct BlockManager {
    block_size: usize,
    prefix_caching: bool,
    blocks: Vec<BlockMeta>,
    /// Free (unreferenced, uncached) blocks; popped from the back.
    free: Vec<BlockId>,
    /// Evictable blocks by LRU tick (smallest tick = least recently used = evicted first).
    lru: BTreeMap<u64, BlockId>,
    /// Monotonic counter for LRU ticks.
    tick: u64,
    /// Prefix cache: full-block hash -> block holding it.
    cache: HashMap<BlockHash, BlockId>,
    num_used: usize,
    stats: PrefixCacheStats,
    invalid_ops: u64,
    hash_fn: fn(Option<BlockHash>, &[u32]) -> BlockHash,
}

impl BlockManager {
    /// A manager for `num_blocks` blocks of `block_size` token slots, all free.
    ///
    /// `block_size` 0 is treated as 1, and `num_blocks` is capped at `u32::MAX` (block ids are
    /// `u32`), so that no input can make later operations panic. With `prefix_caching` false,
    /// `acquire_prefix` never hits and `commit_full` registers nothing (it still returns hashes).
    pub fn new(num_blocks: usize, block_size: usize, prefix_caching: bool) -> Self {
        Self::with_hash_fn(num_blocks, block_size, prefix_caching, hash_block)
    }

    /// Same as `new` with a custom hash function (tests force collisions with it).
    fn with_hash_fn(
        num_blocks: usize,
        block_size: usize,
        prefix_caching: bool,
        hash_fn: fn(Option<BlockHash>, &[u32]) -> BlockHash,
    ) -> Self {
        let num_blocks = num_blocks.min(u32::MAX as usize);
        let blocks = vec![
            BlockMeta {
                free: true,
                ..BlockMeta::default()
            };
            num_blocks
        ];
        // Reversed so that `allocate` hands out 0, 1, 2, ... on a fresh pool.
        let free: Vec<BlockId> = (0..num_blocks as u32).rev().collect();
        BlockManager {
            block_size: block_size.max(1),
            prefix_caching,
            blocks,
            free,
            lru: BTreeMap::new(),
            tick: 0,
            cache: HashMap::new(),
            num_used: 0,
            stats: PrefixCacheStats::default(),
            invalid_ops: 0,
            hash_fn,
        }
    }

    /// Token slots per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Total blocks in the pool.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Whether prefix caching is enabled.
    pub fn prefix_caching(&self) -> bool {
        self.prefix_caching
    }

    /// Blocks that `allocate` can hand out now: free ones plus cached blocks with no reference
    /// (evictable).
    pub fn num_allocatable(&self) -> usize {
        self.free.len() + self.lru.len()
    }

    /// Blocks referenced by at least one sequence.
    pub fn num_used(&self) -> usize {
        self.num_used
    }

    /// Unreferenced blocks still holding a cached prefix (evictable).
    pub fn num_cached(&self) -> usize {
        self.lru.len()
    }

    /// Free blocks (no reference, no cached content).
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Reference count of `block` (0 for an invalid id).
    pub fn ref_count(&self, block: BlockId) -> u32 {
        self.blocks.get(block as usize).map_or(0, |m| m.refs)
    }

    /// Whether `block` is registered in the prefix cache (used or evictable).
    pub fn is_cached(&self, block: BlockId) -> bool {
        self.blocks
            .get(block as usize)
            .is_some_and(|m| m.hash.is_some())
    }

    /// Number of calls ignored because they were invalid (block id out of range, releasing a
    /// block with no reference). Nonzero means a caller bug; counts are never corrupted by them.
    pub fn num_invalid_ops(&self) -> u64 {
        self.invalid_ops
    }

    /// Cumulative prefix-cache statistics: queried tokens, hit tokens.
    pub fn stats(&self) -> PrefixCacheStats {
        self.stats
    }

    /// Number of whole blocks `acquire_prefix` considers for a query.
    fn query_blocks(&self, tokens: &[u32], max_tokens: usize) -> usize {
        tokens.len().min(max_tokens) / self.block_size
    }

    /// Looks up the block caching `tokens` with `parent`; None on a miss or a hash collision.
    fn lookup(&self, parent: Option<BlockHash>, tokens: &[u32]) -> Option<(BlockId, BlockHash)> {
        let hash = (self.hash_fn)(parent, tokens);
        let &id = self.cache.get(&hash)?;
        let meta = self.blocks.get(id as usize)?;
        (meta.hash == Some(hash) && meta.parent == parent && meta.tokens == tokens)
            .then_some((id, hash))
    }

    /// What `acquire_prefix(tokens, max_tokens)` would return, without taking references or
    /// updating statistics. Lets the scheduler check capacity before admitting a request: it
    /// needs `blocks_for(total tokens) - hit_blocks` new blocks, and acquiring the hit blocks
    /// lowers `num_allocatable` by `evictable_blocks`.
    pub fn probe_prefix(&self, tokens: &[u32], max_tokens: usize) -> PrefixProbe {
        let mut probe = PrefixProbe::default();
        if !self.prefix_caching {
            return probe;
        }
        let mut parent = None;
        for chunk in tokens
            .chunks_exact(self.block_size)
            .take(self.query_blocks(tokens, max_tokens))
        {
            let Some((id, hash)) = self.lookup(parent, chunk) else {
                break;
            };
            probe.hit_blocks += 1;
            if self.blocks[id as usize].refs == 0 {
                probe.evictable_blocks += 1;
            }
            parent = Some(hash);
        }
        probe
    }

    /// Longest cached prefix of `tokens` in whole blocks, covering at most `max_tokens` tokens
    /// (and at most `tokens.len()`); takes one reference on each returned block, reviving
    /// evictable ones. The returned ids are the sequence's first blocks (cached tokens =
    /// `ids.len() * block_size`); the hash is that of the last returned block (the `parent` for
    /// the sequence's next full block), None when nothing was returned.
    ///
    /// Statistics: queried tokens += `min(max_tokens, tokens.len())` rounded down to whole
    /// blocks, hit tokens += cached tokens. With prefix caching off, returns nothing and records
    /// nothing. Callers usually pass `max_tokens = prompt_len - 1` so that at least one token is
    /// computed to produce logits.
    pub fn acquire_prefix(
        &mut self,
        tokens: &[u32],
        max_tokens: usize,
    ) -> (Vec<BlockId>, Option<BlockHash>) {
        if !self.prefix_caching {
            return (Vec::new(), None);
        }
        let n = self.query_blocks(tokens, max_tokens);
        let mut ids = Vec::new();
        let mut parent = None;
        for chunk in tokens.chunks_exact(self.block_size).take(n) {
            let Some((id, hash)) = self.lookup(parent, chunk) else {
                break;
            };
            self.add_ref(id);
            ids.push(id);
            parent = Some(hash);
        }
        self.stats.queried_tokens += (n * self.block_size) as u64;
        self.stats.hit_tokens += (ids.len() * self.block_size) as u64;
        (ids, parent)
    }

    /// Takes one reference on a valid block that is used or evictable (never free).
    fn add_ref(&mut self, id: BlockId) {
        let meta = &mut self.blocks[id as usize];
        if meta.refs == 0 {
            if let Some(tick) = meta.lru_tick.take() {
                self.lru.remove(&tick);
            }
            self.num_used += 1;
        }
        meta.refs = meta.refs.saturating_add(1);
    }

    /// One fresh block with one reference: from the free list, else the least recently used
    /// evictable block (its cache entry is dropped). None when every block is referenced.
    /// The returned block's KV content is stale and must be overwritten.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let id = if let Some(id) = self.free.pop() {
            self.blocks[id as usize].free = false;
            id
        } else {
            let (_, id) = self.lru.pop_first()?;
            let meta = &mut self.blocks[id as usize];
            meta.lru_tick = None;
            if let Some(hash) = meta.hash.take() {
                if self.cache.get(&hash) == Some(&id) {
                    self.cache.remove(&hash);
                }
            }
            meta.parent = None;
            meta.tokens.clear();
            id
        };
        self.blocks[id as usize].refs = 1;
        self.num_used += 1;
        Some(id)
    }

    /// Registers `block`, which has just become full, in the prefix cache: `tokens` are its
    /// `block_size` tokens, `parent` the hash returned for the previous block of the same
    /// sequence (None for a sequence's first block). Returns the block's hash, the `parent` for
    /// the next block.
    ///
    /// The hash is always returned, but nothing is registered when prefix caching is off, when
    /// `tokens.len() != block_size`, when `block` is invalid or unreferenced (caller bug, counted
    /// in `num_invalid_ops`), or when the same hash is already cached in another block: the
    /// existing entry is kept and this block stays uncached (it becomes free on release).
    /// Committing a block again with the same content is a no-op.
    pub fn commit_full(
        &mut self,
        block: BlockId,
        parent: Option<BlockHash>,
        tokens: &[u32],
    ) -> BlockHash {
        let hash = (self.hash_fn)(parent, tokens);
        if !self.prefix_caching || tokens.len() != self.block_size {
            return hash;
        }
        let Some(meta) = self.blocks.get(block as usize) else {
            self.invalid_ops += 1;
            return hash;
        };
        if meta.refs == 0 {
            self.invalid_ops += 1;
            return hash;
        }
        if let Some(old) = meta.hash {
            if old == hash && meta.parent == parent && meta.tokens == tokens {
                return hash;
            }
            // Re-committed with different content: drop the stale entry first.
            if self.cache.get(&old) == Some(&block) {
                self.cache.remove(&old);
            }
            let meta = &mut self.blocks[block as usize];
            meta.hash = None;
            meta.parent = None;
            meta.tokens.clear();
        }
        if self.cache.contains_key(&hash) {
            return hash;
        }
        self.cache.insert(hash, block);
        let meta = &mut self.blocks[block as usize];
        meta.hash = Some(hash);
        meta.parent = parent;
        meta.tokens.clear();
        meta.tokens.extend_from_slice(tokens);
        hash
    }

    /// Drops one reference to each block. `blocks` should be a sequence's blocks in sequence
    /// order; they are processed LAST FIRST, so that a sequence's tail blocks become the least
    /// recently used and are evicted before its head (as vLLM does). A block reaching zero
    /// references becomes evictable if cached (more recently released = evicted later) or free
    /// otherwise. Invalid ids and blocks without a reference are skipped and counted in
    /// `num_invalid_ops` (a caller bug; counts stay consistent).
    pub fn release(&mut self, blocks: &[BlockId]) {
        for &id in blocks.iter().rev() {
            let Some(meta) = self.blocks.get_mut(id as usize) else {
                self.invalid_ops += 1;
                tracing::error!(block = id, "block_manager: release of invalid block id");
                continue;
            };
            if meta.refs == 0 {
                self.invalid_ops += 1;
                tracing::error!(block = id, "block_manager: release of unreferenced block");
                continue;
            }
            meta.refs -= 1;
            if meta.refs > 0 {
                continue;
            }
            self.num_used -= 1;
            if meta.hash.is_some() {
                let tick = self.tick;
                self.tick += 1;
                meta.lru_tick = Some(tick);
                self.lru.insert(tick, id);
            } else {
                meta.free = true;
                self.free.push(id);
            }
        }
    }

    /// Verifies every internal invariant; returns a description of the first violation.
    /// O(num_blocks): for tests and debugging only.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut used = 0usize;
        let mut free = 0usize;
        let mut evictable = 0usize;
        for (i, m) in self.blocks.iter().enumerate() {
            let states = [m.refs > 0, m.free, m.lru_tick.is_some()];
            if states.iter().filter(|&&s| s).count() != 1 {
                return Err(format!("block {i} not in exactly one state: {m:?}"));
            }
            if m.refs > 0 {
                used += 1;
            }
            if m.free {
                free += 1;
                if m.hash.is_some() {
                    return Err(format!("free block {i} has a hash"));
                }
            }
            if let Some(t) = m.lru_tick {
                evictable += 1;
                if self.lru.get(&t) != Some(&(i as u32)) {
                    return Err(format!("evictable block {i} missing from LRU"));
                }
                if m.hash.is_none() {
                    return Err(format!("evictable block {i} has no hash"));
                }
            }
            if let Some(h) = m.hash {
                if self.cache.get(&h) != Some(&(i as u32)) {
                    return Err(format!("block {i} hash not mapped to it"));
                }
            }
        }
        if used != self.num_used {
            return Err(format!("num_used {} != counted {used}", self.num_used));
        }
        if free != self.free.len() || evictable != self.lru.len() {
            return Err("free list / LRU length mismatch (duplicates?)".into());
        }
        for (h, &id) in &self.cache {
            if self.blocks.get(id as usize).and_then(|m| m.hash) != Some(*h) {
                return Err(format!("cache entry {h:?} -> {id} stale"));
            }
        }
        if self.num_used + self.num_allocatable() != self.num_blocks() {
            return Err("used + allocatable != num_blocks".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const BS: usize = 4;

    fn ok(bm: &BlockManager) {
        if let Err(e) = bm.check_invariants() {
            panic!("invariant violated: {e}");
        }
    }

    /// Allocates blocks for `tokens` (after any cached prefix is acquired), commits every full
    /// block and returns the sequence's blocks.
    fn run_seq(bm: &mut BlockManager, tokens: &[u32]) -> Vec<BlockId> {
        let (mut blocks, mut parent) = bm.acquire_prefix(tokens, tokens.len());
        let start = blocks.len();
        for chunk in tokens.chunks(bm.block_size()).skip(start) {
            let b = bm.allocate().expect("out of blocks");
            blocks.push(b);
            if chunk.len() == bm.block_size() {
                parent = Some(bm.commit_full(b, parent, chunk));
            }
        }
        ok(bm);
        blocks
    }

    fn toks(range: std::ops::Range<u32>) -> Vec<u32> {
        range.collect()
    }

    #[test]
    fn allocate_until_exhaustion_returns_none() {
        let mut bm = BlockManager::new(3, BS, true);
        assert_eq!(bm.num_allocatable(), 3);
        let ids: Vec<_> = (0..3).map(|_| bm.allocate().unwrap()).collect();
        assert_eq!(ids, vec![0, 1, 2]);
        assert_eq!(bm.allocate(), None);
        assert_eq!(bm.num_used(), 3);
        assert_eq!(bm.num_allocatable(), 0);
        ok(&bm);
        let mut empty = BlockManager::new(0, BS, true);
        assert_eq!(empty.allocate(), None);
        ok(&empty);
    }

    #[test]
    fn release_returns_capacity() {
        let mut bm = BlockManager::new(4, BS, true);
        let a = bm.allocate().unwrap();
        let b = bm.allocate().unwrap();
        assert_eq!(bm.num_allocatable(), 2);
        bm.release(&[a, b]);
        assert_eq!(bm.num_allocatable(), 4);
        assert_eq!(bm.num_used(), 0);
        assert_eq!(bm.num_cached(), 0);
        assert_eq!(bm.num_free(), 4);
        ok(&bm);
        for _ in 0..4 {
            assert!(bm.allocate().is_some());
        }
        assert_eq!(bm.allocate(), None);
    }

    #[test]
    fn prefix_hit_after_commit_and_release() {
        let mut bm = BlockManager::new(8, BS, true);
        let prompt = toks(0..10); // 2 full blocks + 2 tokens
        let seq = run_seq(&mut bm, &prompt);
        assert_eq!(seq.len(), 3);
        bm.release(&seq);
        assert_eq!(bm.num_cached(), 2);
        assert_eq!(bm.num_free(), 6);
        assert_eq!(bm.num_used(), 0);
        ok(&bm);

        let (ids, last) = bm.acquire_prefix(&prompt, prompt.len() - 1);
        assert_eq!(ids, seq[..2].to_vec());
        let h0 = hash_block(None, &prompt[0..4]);
        assert_eq!(last, Some(hash_block(Some(h0), &prompt[4..8])));
        assert_eq!(bm.num_cached(), 0);
        assert_eq!(bm.num_used(), 2);
        ok(&bm);
    }

    #[test]
    fn partial_prefix_shared_then_diverging() {
        let mut bm = BlockManager::new(16, BS, true);
        let a: Vec<u32> = toks(0..12);
        let seq_a = run_seq(&mut bm, &a);
        bm.release(&seq_a);
        // Same first block, different second block, same third block content.
        let mut b = a.clone();
        b[5] = 999;
        let (ids, last) = bm.acquire_prefix(&b, b.len());
        assert_eq!(ids, vec![seq_a[0]]);
        assert_eq!(last, Some(hash_block(None, &a[0..4])));
        // Third block has identical tokens but a different parent: must not hit.
        let probe = bm.probe_prefix(&b, b.len());
        assert_eq!(probe.hit_blocks, 1);
        ok(&bm);
        // Completely different first block: no hit.
        let (ids, last) = bm.acquire_prefix(&toks(100..112), 12);
        assert!(ids.is_empty());
        assert_eq!(last, None);
    }

    #[test]
    fn max_tokens_caps_the_hit() {
        let mut bm = BlockManager::new(16, BS, true);
        let p = toks(0..16);
        let seq = run_seq(&mut bm, &p);
        bm.release(&seq);
        // 4 full blocks cached; max_tokens 15 -> at most 3 blocks.
        let (ids, _) = bm.acquire_prefix(&p, 15);
        assert_eq!(ids.len(), 3);
        bm.release(&ids);
        let (ids, _) = bm.acquire_prefix(&p, 3);
        assert!(ids.is_empty());
        let (ids, _) = bm.acquire_prefix(&p, 8);
        assert_eq!(ids, seq[..2].to_vec());
        bm.release(&ids);
        // max_tokens larger than the query is capped by the query length.
        let (ids, _) = bm.acquire_prefix(&p[..9], usize::MAX);
        assert_eq!(ids.len(), 2);
        ok(&bm);
    }

    #[test]
    fn lru_order_oldest_first_and_tail_before_head() {
        let mut bm = BlockManager::new(6, BS, true);
        let s1 = run_seq(&mut bm, &toks(0..12));
        let s2 = run_seq(&mut bm, &toks(100..112));
        bm.release(&s1);
        bm.release(&s2);
        assert_eq!(bm.num_cached(), 6);
        assert_eq!(bm.num_free(), 0);
        // Expected eviction order: s1 tail..head, then s2 tail..head.
        let expected: Vec<BlockId> = s1.iter().rev().chain(s2.iter().rev()).copied().collect();
        let mut got = Vec::new();
        for _ in 0..6 {
            let b = bm.allocate().unwrap();
            assert!(!bm.is_cached(b), "evicted block must lose its hash");
            got.push(b);
            ok(&bm);
        }
        assert_eq!(got, expected);
        assert_eq!(bm.allocate(), None);
    }

    #[test]
    fn eviction_drops_cache_entry() {
        let mut bm = BlockManager::new(3, BS, true);
        let p = toks(0..12);
        let s = run_seq(&mut bm, &p);
        bm.release(&s);
        // Evict the tail block (last block of the sequence).
        let b = bm.allocate().unwrap();
        assert_eq!(b, s[2]);
        let (ids, _) = bm.acquire_prefix(&p, 12);
        assert_eq!(ids, s[..2].to_vec());
        ok(&bm);
    }

    #[test]
    fn free_list_preferred_over_eviction() {
        let mut bm = BlockManager::new(4, BS, true);
        let s = run_seq(&mut bm, &toks(0..8));
        bm.release(&s);
        assert_eq!(bm.num_cached(), 2);
        let a = bm.allocate().unwrap();
        let b = bm.allocate().unwrap();
        assert!(!s.contains(&a) && !s.contains(&b));
        assert_eq!(bm.num_cached(), 2);
        ok(&bm);
    }

    #[test]
    fn revived_block_is_not_evictable() {
        let mut bm = BlockManager::new(3, BS, true);
        let p = toks(0..8);
        let s = run_seq(&mut bm, &p);
        bm.release(&s);
        let (ids, _) = bm.acquire_prefix(&p, 8);
        assert_eq!(ids, s);
        assert_eq!(bm.num_cached(), 0);
        assert_eq!(bm.num_allocatable(), 1);
        assert!(bm.allocate().is_some());
        assert_eq!(bm.allocate(), None, "revived blocks must not be handed out");
        ok(&bm);
        // After release they become evictable again and keep their content.
        bm.release(&ids);
        assert_eq!(bm.num_cached(), 2);
        assert_eq!(bm.probe_prefix(&p, 8).hit_blocks, 2);
        ok(&bm);
    }

    #[test]
    fn shared_references() {
        let mut bm = BlockManager::new(8, BS, true);
        let system = toks(0..8);
        let s = run_seq(&mut bm, &system);
        // Still running: a second sequence with the same prefix shares the blocks.
        let mut q2 = system.clone();
        q2.extend([50, 51, 52]);
        let (ids2, _) = bm.acquire_prefix(&q2, q2.len() - 1);
        assert_eq!(ids2, s);
        assert_eq!(bm.ref_count(s[0]), 2);
        assert_eq!(bm.num_used(), 2);
        let (ids3, _) = bm.acquire_prefix(&q2, q2.len() - 1);
        assert_eq!(ids3, s);
        assert_eq!(bm.ref_count(s[1]), 3);
        bm.release(&s);
        assert_eq!(bm.ref_count(s[0]), 2);
        assert_eq!(bm.num_used(), 2);
        assert_eq!(bm.num_cached(), 0);
        bm.release(&ids2);
        assert_eq!(bm.num_used(), 2);
        bm.release(&ids3);
        assert_eq!(bm.num_used(), 0);
        assert_eq!(bm.num_cached(), 2);
        ok(&bm);
    }

    #[test]
    fn duplicate_commit_keeps_one_entry() {
        let mut bm = BlockManager::new(8, BS, true);
        let p = toks(0..4);
        let a = bm.allocate().unwrap();
        let b = bm.allocate().unwrap();
        let ha = bm.commit_full(a, None, &p);
        let hb = bm.commit_full(b, None, &p);
        assert_eq!(ha, hb);
        assert!(bm.is_cached(a));
        assert!(!bm.is_cached(b));
        // Re-committing the same block with the same content is a no-op.
        assert_eq!(bm.commit_full(a, None, &p), ha);
        ok(&bm);
        bm.release(&[a]);
        bm.release(&[b]);
        assert_eq!(bm.num_cached(), 1);
        assert_eq!(bm.num_free(), 7);
        let (ids, _) = bm.acquire_prefix(&p, 4);
        assert_eq!(ids, vec![a]);
        ok(&bm);
    }

    #[test]
    fn recommit_with_different_content_replaces_entry() {
        let mut bm = BlockManager::new(4, BS, true);
        let a = bm.allocate().unwrap();
        bm.commit_full(a, None, &[1, 2, 3, 4]);
        bm.commit_full(a, None, &[5, 6, 7, 8]);
        ok(&bm);
        bm.release(&[a]);
        assert!(bm.acquire_prefix(&[1, 2, 3, 4], 4).0.is_empty());
        assert_eq!(bm.acquire_prefix(&[5, 6, 7, 8], 4).0, vec![a]);
        ok(&bm);
    }

    fn colliding_hash(_parent: Option<BlockHash>, _tokens: &[u32]) -> BlockHash {
        BlockHash(42)
    }

    #[test]
    fn hash_collision_is_a_miss() {
        let mut bm = BlockManager::with_hash_fn(8, BS, true, colliding_hash);
        let s = run_seq(&mut bm, &toks(0..4));
        bm.release(&s);
        // Different tokens, same (forced) hash: must miss.
        let (ids, last) = bm.acquire_prefix(&toks(10..14), 4);
        assert!(ids.is_empty());
        assert_eq!(last, None);
        assert_eq!(bm.stats().hit_tokens, 0);
        // Same tokens, different parent, same hash: must miss too.
        let x = bm.allocate().unwrap();
        let y = bm.allocate().unwrap();
        let hx = bm.commit_full(x, None, &toks(20..24));
        assert!(
            !bm.is_cached(x),
            "hash 42 already cached -> existing entry kept"
        );
        let _ = bm.commit_full(y, Some(hx), &toks(0..4));
        assert!(!bm.is_cached(y));
        ok(&bm);
        // Identical query still hits.
        let (ids, _) = bm.acquire_prefix(&toks(0..4), 4);
        assert_eq!(ids, s);
        // Stored parent differs from query parent: with the real hash this cannot collide, so
        // check lookup directly through the forced hash.
        assert!(bm.lookup(Some(BlockHash(7)), &toks(0..4)).is_none());
        ok(&bm);
    }

    #[test]
    fn prefix_caching_disabled() {
        let mut bm = BlockManager::new(4, BS, false);
        assert!(!bm.prefix_caching());
        let p = toks(0..8);
        let s = run_seq(&mut bm, &p);
        assert!(s.iter().all(|&b| !bm.is_cached(b)));
        bm.release(&s);
        assert_eq!(bm.num_cached(), 0);
        assert_eq!(bm.num_free(), 4);
        let (ids, last) = bm.acquire_prefix(&p, 8);
        assert!(ids.is_empty());
        assert_eq!(last, None);
        assert_eq!(bm.probe_prefix(&p, 8), PrefixProbe::default());
        assert_eq!(bm.stats(), PrefixCacheStats::default());
        ok(&bm);
    }

    #[test]
    fn stats_counts() {
        let mut bm = BlockManager::new(16, BS, true);
        assert_eq!(bm.stats().hit_rate(), 0.0);
        let p = toks(0..10);
        // First query: 9 tokens -> 2 whole blocks queried, no hit.
        let s = run_seq(&mut bm, &p); // run_seq queries len 10 -> 2 blocks
        assert_eq!(
            bm.stats(),
            PrefixCacheStats {
                queried_tokens: 8,
                hit_tokens: 0
            }
        );
        bm.release(&s);
        let (ids, _) = bm.acquire_prefix(&p, 9);
        assert_eq!(ids.len(), 2);
        assert_eq!(
            bm.stats(),
            PrefixCacheStats {
                queried_tokens: 16,
                hit_tokens: 8
            }
        );
        // Query shorter than one block counts nothing.
        bm.acquire_prefix(&p, 3);
        assert_eq!(bm.stats().queried_tokens, 16);
        // Probing does not count.
        bm.probe_prefix(&p, 9);
        assert_eq!(bm.stats().queried_tokens, 16);
        assert!((bm.stats().hit_rate() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn probe_matches_acquire() {
        let mut bm = BlockManager::new(8, BS, true);
        let p = toks(0..12);
        let s = run_seq(&mut bm, &p);
        bm.release(&s[1..]); // s[0] stays used, s[1], s[2] evictable
        let probe = bm.probe_prefix(&p, 12);
        assert_eq!(
            probe,
            PrefixProbe {
                hit_blocks: 3,
                evictable_blocks: 2
            }
        );
        let before = bm.num_allocatable();
        let (ids, _) = bm.acquire_prefix(&p, 12);
        assert_eq!(ids.len(), probe.hit_blocks);
        assert_eq!(before - bm.num_allocatable(), probe.evictable_blocks);
        ok(&bm);
    }

    #[test]
    fn invalid_operations_do_not_corrupt() {
        let mut bm = BlockManager::new(4, BS, true);
        let a = bm.allocate().unwrap();
        bm.release(&[a]);
        bm.release(&[a]); // double release
        bm.release(&[3]); // never allocated
        bm.release(&[99]); // out of range
        assert_eq!(bm.num_invalid_ops(), 3);
        assert_eq!(bm.num_used(), 0);
        assert_eq!(bm.num_allocatable(), 4);
        ok(&bm);
        // Commit on an unreferenced or invalid block registers nothing.
        bm.commit_full(2, None, &[1, 2, 3, 4]);
        bm.commit_full(99, None, &[1, 2, 3, 4]);
        assert_eq!(bm.num_invalid_ops(), 5);
        // Wrong token count: hash returned, nothing cached.
        let b = bm.allocate().unwrap();
        bm.commit_full(b, None, &[1, 2, 3]);
        assert!(!bm.is_cached(b));
        assert!(bm.acquire_prefix(&[1, 2, 3, 4], 4).0.is_empty());
        ok(&bm);
        // Degenerate construction.
        let mut z = BlockManager::new(2, 0, true);
        assert_eq!(z.block_size(), 1);
        let (ids, _) = z.acquire_prefix(&[1, 2, 3], 3);
        assert!(ids.is_empty());
        assert_eq!(bm.ref_count(1234), 0);
        ok(&z);
    }

    #[test]
    fn hash_chain_properties() {
        let h0 = hash_block(None, &[1, 2, 3, 4]);
        assert_eq!(h0, hash_block(None, &[1, 2, 3, 4]));
        assert_ne!(h0, hash_block(None, &[1, 2, 3, 5]));
        assert_ne!(h0, hash_block(Some(h0), &[1, 2, 3, 4]));
        assert_ne!(h0, hash_block(Some(BlockHash(HASH_SEED)), &[1, 2, 3, 4]));
        assert_ne!(hash_block(None, &[1, 2]), hash_block(None, &[1, 2, 0]));
    }

    #[test]
    fn large_pool_is_cheap() {
        // 100k blocks: allocation and LRU eviction must not scan the pool.
        let mut bm = BlockManager::new(100_000, 16, true);
        let mut seqs = Vec::new();
        for s in 0..1000u32 {
            let p: Vec<u32> = (0..16 * 100).map(|i| s * 100_000 + i).collect();
            seqs.push(run_seq_nocheck(&mut bm, &p));
        }
        assert_eq!(bm.allocate(), None);
        for s in &seqs {
            bm.release(s);
        }
        assert_eq!(bm.num_cached(), 100_000);
        for _ in 0..100_000 {
            assert!(bm.allocate().is_some());
        }
        assert_eq!(bm.num_cached(), 0);
        ok(&bm);
    }

    fn run_seq_nocheck(bm: &mut BlockManager, tokens: &[u32]) -> Vec<BlockId> {
        let (mut blocks, mut parent) = bm.acquire_prefix(tokens, tokens.len());
        for chunk in tokens.chunks(bm.block_size()).skip(blocks.len()) {
            let b = bm.allocate().expect("out of blocks");
            blocks.push(b);
            if chunk.len() == bm.block_size() {
                parent = Some(bm.commit_full(b, parent, chunk));
            }
        }
        blocks
    }

    /// A sequence in the randomized test: its tokens so far and its blocks.
    struct Seq {
        tokens: Vec<u32>,
        blocks: Vec<BlockId>,
        /// Hash of the last committed (full) block.
        parent: Option<BlockHash>,
    }

    #[test]
    fn randomized_consistency() {
        for &caching in &[true, false] {
            for seed in 0..4u64 {
                randomized_run(seed, caching);
            }
        }
    }

    fn randomized_run(seed: u64, caching: bool) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let num_blocks = 64;
        let mut bm = BlockManager::new(num_blocks, BS, caching);
        // What the "model" wrote into each block (the KV content); a cache hit must return
        // blocks whose content equals the query.
        let mut content: Vec<Vec<u32>> = vec![Vec::new(); num_blocks];
        let mut live: Vec<Seq> = Vec::new();
        // A few shared prefixes so that hits actually happen; small vocabulary.
        let prefixes: Vec<Vec<u32>> = (0..4)
            .map(|_| {
                (0..rng.random_range(0..14))
                    .map(|_| rng.random_range(0..3))
                    .collect()
            })
            .collect();
        let mut hits = 0usize;
        for _step in 0..5000 {
            match rng.random_range(0..10) {
                // Start a sequence.
                0..=2 => {
                    let mut prompt = prefixes[rng.random_range(0..prefixes.len())].clone();
                    let extra = rng.random_range(0..6);
                    prompt.extend((0..extra).map(|_| rng.random_range(0..3u32)));
                    if prompt.is_empty() {
                        prompt.push(0);
                    }
                    let probe = bm.probe_prefix(&prompt, prompt.len() - 1);
                    let (ids, parent) = bm.acquire_prefix(&prompt, prompt.len() - 1);
                    assert_eq!(ids.len(), probe.hit_blocks);
                    hits += ids.len();
                    let mut expect_parent = None;
                    for (i, &b) in ids.iter().enumerate() {
                        let chunk = &prompt[i * BS..(i + 1) * BS];
                        assert_eq!(content[b as usize], chunk, "hit with wrong KV content");
                        expect_parent = Some(hash_block(expect_parent, chunk));
                    }
                    assert_eq!(parent, expect_parent);
                    let mut seq = Seq {
                        tokens: prompt[..ids.len() * BS].to_vec(),
                        blocks: ids,
                        parent,
                    };
                    // "Prefill" the rest token by token.
                    let rest = prompt[seq.tokens.len()..].to_vec();
                    let mut fits = true;
                    for t in rest {
                        if !append_token(&mut bm, &mut content, &mut seq, t) {
                            fits = false;
                            break;
                        }
                    }
                    if fits {
                        live.push(seq);
                    } else {
                        bm.release(&seq.blocks);
                    }
                }
                // Decode a token in a random live sequence.
                3..=7 if !live.is_empty() => {
                    let i = rng.random_range(0..live.len());
                    let t = rng.random_range(0..3u32);
                    if !append_token(&mut bm, &mut content, &mut live[i], t) {
                        // Preempt: release it.
                        let s = live.swap_remove(i);
                        bm.release(&s.blocks);
                    }
                }
                // Finish a sequence.
                _ if !live.is_empty() => {
                    let i = rng.random_range(0..live.len());
                    let s = live.swap_remove(i);
                    bm.release(&s.blocks);
                }
                _ => {}
            }
            ok(&bm);
            // Reference counts equal what the live sequences hold.
            let mut refs = vec![0u32; num_blocks];
            for s in &live {
                for &b in &s.blocks {
                    refs[b as usize] += 1;
                }
            }
            for (b, &r) in refs.iter().enumerate() {
                assert_eq!(bm.ref_count(b as u32), r, "refcount of block {b}");
            }
            let used = refs.iter().filter(|&&r| r > 0).count();
            assert_eq!(bm.num_used(), used);
            assert_eq!(bm.num_used() + bm.num_allocatable(), num_blocks);
        }
        for s in live.drain(..) {
            bm.release(&s.blocks);
        }
        ok(&bm);
        assert_eq!(bm.num_used(), 0);
        assert_eq!(bm.num_allocatable(), num_blocks);
        assert_eq!(bm.num_invalid_ops(), 0);
        let st = bm.stats();
        assert_eq!(st.hit_tokens, (hits * BS) as u64);
        if caching {
            assert!(hits > 0, "seed {seed}: randomized test never hit the cache");
        } else {
            assert_eq!(hits, 0);
        }
    }

    /// Appends one token to `seq`, allocating a block when needed and committing a block when
    /// it becomes full. Returns false when no block is available.
    fn append_token(
        bm: &mut BlockManager,
        content: &mut [Vec<u32>],
        seq: &mut Seq,
        t: u32,
    ) -> bool {
        let pos = seq.tokens.len();
        if pos % BS == 0 {
            let Some(b) = bm.allocate() else {
                return false;
            };
            // The model overwrites the block from scratch.
            content[b as usize].clear();
            seq.blocks.push(b);
        }
        let b = seq.blocks[pos / BS];
        // A block being written must not be shared with anyone else.
        assert_eq!(bm.ref_count(b), 1, "writing into a shared block");
        content[b as usize].push(t);
        seq.tokens.push(t);
        if seq.tokens.len() % BS == 0 {
            let start = seq.tokens.len() - BS;
            seq.parent = Some(bm.commit_full(b, seq.parent, &seq.tokens[start..]));
        }
        true
    }
}
