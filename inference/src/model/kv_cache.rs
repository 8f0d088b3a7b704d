//! Per-sequence KV cache: contiguous, preallocated f32 storage per layer, written in place.

use super::ModelError;

/// Keys and values of one sequence for every layer.
///
/// Layout per layer: `k[layer]` and `v[layer]` are `[capacity, num_kv_heads, head_dim]` f32,
/// row `p` holding the (roped) key / value of the token at position `p`. Memory is allocated
/// zeroed up front (the OS commits pages only as they are written).
#[derive(Debug)]
pub struct KvCache {
    pub(crate) k: Vec<Vec<f32>>,
    pub(crate) v: Vec<Vec<f32>>,
    len: usize,
    capacity: usize,
    /// Floats per token row: `num_kv_heads * head_dim`.
    pub(crate) row: usize,
}

impl KvCache {
    pub(crate) fn new(
        num_layers: usize,
        num_kv_heads: usize,
        head_dim: usize,
        capacity: usize,
    ) -> Result<Self, ModelError> {
        let row = num_kv_heads * head_dim;
        let per_layer = capacity
            .checked_mul(row)
            .ok_or_else(|| ModelError::Unsupported(format!("KV cache of {capacity} tokens")))?;
        Ok(Self {
            k: (0..num_layers).map(|_| vec![0f32; per_layer]).collect(),
            v: (0..num_layers).map(|_| vec![0f32; per_layer]).collect(),
            len: 0,
            capacity,
            row,
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
        self.capacity
    }

    /// Forgets every token at position `>= len` (no-op if `len >= self.len()`).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub(crate) fn set_len(&mut self, len: usize) {
        debug_assert!(len <= self.capacity);
        self.len = len;
    }
}
