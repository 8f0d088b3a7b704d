//! KV storage: a paged pool of fixed-size blocks ([`KvPool`]) shared by every sequence of an
//! engine, and [`KvCache`], a single sequence's contiguous cache (one block) for tests and
//! benchmarks.
//!
//! The paging scheme follows vLLM's PagedAttention (Kwon et al., SOSP 2023): a sequence's
//! token at position `p` lives in slot `p % block_size` of block `block_table[p / block_size]`.

use super::ModelError;

/// Keys and values of `num_blocks` blocks of `block_size` token slots, for every layer.
///
/// Layout per layer: `k[layer]` and `v[layer]` are `[num_blocks * block_size, num_kv_heads,
/// head_dim]` f32; slot `b * block_size + s` holds the (roped) key / value of one token. Memory
/// is allocated zeroed up front (the OS commits pages only as they are first written), so the
/// resident size grows with use up to [`KvPool::bytes`].
#[derive(Debug)]
pub struct KvPool {
    pub(crate) k: Vec<Vec<f32>>,
    pub(crate) v: Vec<Vec<f32>>,
    block_size: usize,
    num_blocks: usize,
    /// Floats per token slot: `num_kv_heads * head_dim`.
    pub(crate) row: usize,
}

impl KvPool {
    pub(crate) fn new(
        num_layers: usize,
        num_kv_heads: usize,
        head_dim: usize,
        block_size: usize,
        num_blocks: usize,
    ) -> Result<Self, ModelError> {
        if block_size == 0 || num_blocks == 0 {
            return Err(ModelError::Unsupported(format!(
                "a KV pool of {num_blocks} blocks of {block_size} tokens"
            )));
        }
        let row = num_kv_heads * head_dim;
        let per_layer = block_size
            .checked_mul(num_blocks)
            .and_then(|n| n.checked_mul(row))
            .ok_or_else(|| {
                ModelError::Unsupported(format!(
                    "a KV pool of {num_blocks} blocks of {block_size} tokens"
                ))
            })?;
        Ok(Self {
            k: (0..num_layers).map(|_| vec![0f32; per_layer]).collect(),
            v: (0..num_layers).map(|_| vec![0f32; per_layer]).collect(),
            block_size,
            num_blocks,
            row,
        })
    }

    /// Token slots per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Number of blocks.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Bytes of one block over all layers, keys and values.
    pub fn bytes_per_block(&self) -> usize {
        2 * self.k.len() * self.block_size * self.row * std::mem::size_of::<f32>()
    }

    /// Bytes of the whole pool (its resident size once every block has been written).
    pub fn bytes(&self) -> usize {
        self.bytes_per_block() * self.num_blocks
    }
}

/// One sequence's contiguous KV cache: a pool of one block of `capacity` tokens.
#[derive(Debug)]
pub struct KvCache {
    pub(crate) pool: KvPool,
    len: usize,
}

/// The block table of a [`KvCache`]: its only block.
pub(crate) const SINGLE_BLOCK: [u32; 1] = [0];

impl KvCache {
    pub(crate) fn new(
        num_layers: usize,
        num_kv_heads: usize,
        head_dim: usize,
        capacity: usize,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            pool: KvPool::new(num_layers, num_kv_heads, head_dim, capacity.max(1), 1)?,
            len: 0,
        })
    }

    /// Number of tokens whose keys/values are stored (the next token's position).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no token is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maximum number of tokens this cache can hold.
    pub fn capacity(&self) -> usize {
        self.pool.block_size
    }

    /// Forgets every token at position `>= len` (no-op if `len >= self.len()`).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub(crate) fn set_len(&mut self, len: usize) {
        debug_assert!(len <= self.capacity());
        self.len = len;
    }
}
