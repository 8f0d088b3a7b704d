//! Reading GGUF files: metadata helpers, tensor loading and tensor type conversion at load.
//!
//! candle's CPU kernels are scalar for Q4_1/Q5_0/Q5_1, and the small models we serve store most
//! matrices in those formats (SmolLM2: Q4_1, Qwen2.5 / Gemma 3: Q5_0). [`to_q8_0_parts`]
//! rewrites Q4_0/Q4_1/Q5_0/Q5_1 exactly as Q8_0 blocks (plus per-block offsets for the formats
//! with a min), which the model's packed VNNI matmul then runs (see `model::qmatmul`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{Read, Seek};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::Device;
use half::f16;

use crate::model::ModelError;

/// Bytes per 32-value Q8_0 block (f16 scale + 32 x i8).
const Q8_0_BLOCK_BYTES: usize = 34;

/// Reads a metadata value, `MissingMetadata(key)` if absent.
pub fn metadata<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<&'a Value, ModelError> {
    md.get(key)
        .ok_or_else(|| ModelError::MissingMetadata(key.to_string()))
}

/// Reads an unsigned integer metadata value (any integer width).
pub fn metadata_usize(md: &HashMap<String, Value>, key: &str) -> Result<usize, ModelError> {
    let v = metadata(md, key)?;
    let n = match v {
        Value::U8(x) => *x as u64,
        Value::U16(x) => *x as u64,
        Value::U32(x) => *x as u64,
        Value::U64(x) => *x,
        Value::I8(x) if *x >= 0 => *x as u64,
        Value::I16(x) if *x >= 0 => *x as u64,
        Value::I32(x) if *x >= 0 => *x as u64,
        Value::I64(x) if *x >= 0 => *x as u64,
        _ => {
            return Err(ModelError::InvalidMetadata(format!(
                "{key}: expected an integer, got {v:?}"
            )))
        }
    };
    usize::try_from(n).map_err(|_| ModelError::InvalidMetadata(format!("{key}: {n} too large")))
}

/// Reads a float metadata value (f32/f64, or an integer).
pub fn metadata_f64(md: &HashMap<String, Value>, key: &str) -> Result<f64, ModelError> {
    let v = metadata(md, key)?;
    match v {
        Value::F32(x) => Ok(*x as f64),
        Value::F64(x) => Ok(*x),
        _ => metadata_usize(md, key).map(|x| x as f64),
    }
}

/// Reads a string metadata value.
pub fn metadata_str<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<&'a str, ModelError> {
    match metadata(md, key)? {
        Value::String(s) => Ok(s.as_str()),
        v => Err(ModelError::InvalidMetadata(format!(
            "{key}: expected a string, got {v:?}"
        ))),
    }
}

/// Loads one tensor by name; `MissingTensor(name)` if the file has none.
pub fn read_tensor<R: Read + Seek>(
    content: &Content,
    reader: &mut R,
    name: &str,
    device: &Device,
) -> Result<QTensor, ModelError> {
    if !content.tensor_infos.contains_key(name) {
        return Err(ModelError::MissingTensor(name.to_string()));
    }
    Ok(content.tensor(reader, name, device)?)
}

/// Loads a 1-D tensor (norm weights, biases) dequantized to f32.
pub fn read_vector<R: Read + Seek>(
    content: &Content,
    reader: &mut R,
    name: &str,
) -> Result<Vec<f32>, ModelError> {
    let t = read_tensor(content, reader, name, &Device::Cpu)?;
    Ok(t.dequantize(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

/// True for the 32-value block formats that [`to_q8_0_parts`] converts.
pub fn converts_to_q8_0(dtype: GgmlDType) -> bool {
    matches!(
        dtype,
        GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 | GgmlDType::Q8_0
    )
}

/// A 2-D `[n, k]` matrix rewritten as Q8_0 blocks, exactly: `W = Q8_0 + offsets` where the
/// optional `offsets` (`[n, k/32]` f32, one per 32-value block) are added to every value of their
/// block (the `m + c*d` term of Q4_1/Q5_1; `None` for formats without a min).
pub struct Q8_0Parts {
    /// `n * k/32` blocks of 34 bytes (f16 scale, 32 x i8).
    pub blocks: Vec<u8>,
    pub offsets: Option<Vec<f32>>,
    pub n: usize,
    pub k: usize,
}

/// Converts a Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 matrix `[n, k]` to [`Q8_0Parts`] without any loss:
/// Q4_0 `d(q-8)` and Q5_0 `d(q-16)` keep their scale; Q4_1 `dq + m` becomes `d(q-8)` plus the
/// block offset `m + 8d` (Q5_1: `d(q-16)` plus `m + 16d`). Errors: `Unsupported` for other
/// types or a `k` not a multiple of 32.
pub fn to_q8_0_parts(t: &QTensor) -> Result<Q8_0Parts, ModelError> {
    let dtype = t.dtype();
    let (n, k) = t.shape().dims2()?;
    if !converts_to_q8_0(dtype) || k % 32 != 0 {
        return Err(ModelError::Unsupported(format!(
            "conversion of {dtype:?} [{n}, {k}] to Q8_0"
        )));
    }
    let in_block = dtype.type_size();
    let kb = k / 32;
    let data = t.data()?;
    if data.len() != n * kb * in_block {
        return Err(ModelError::Unsupported(format!(
            "{dtype:?} tensor of {} bytes for shape [{n}, {k}]",
            data.len()
        )));
    }
    let has_min = matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q5_1);
    let mut blocks = vec![0u8; n * kb * Q8_0_BLOCK_BYTES];
    let mut offsets = if has_min {
        vec![0f32; n * kb]
    } else {
        Vec::new()
    };
    for i in 0..n * kb {
        let src = &data[i * in_block..(i + 1) * in_block];
        let dst = &mut blocks[i * Q8_0_BLOCK_BYTES..(i + 1) * Q8_0_BLOCK_BYTES];
        let rd = |o: usize| f16::from_le_bytes([src[o], src[o + 1]]).to_f32();
        // (offset of the nibbles, offset of the 5th bits if any, zero point)
        let (qs_at, qh_at, zero) = match dtype {
            GgmlDType::Q8_0 => {
                dst.copy_from_slice(src);
                continue;
            }
            GgmlDType::Q4_0 => (2, None, 8),
            GgmlDType::Q4_1 => (4, None, 8),
            GgmlDType::Q5_0 => (6, Some(2), 16),
            GgmlDType::Q5_1 => (8, Some(4), 16),
            _ => unreachable!("checked by converts_to_q8_0"),
        };
        dst[..2].copy_from_slice(&src[..2]);
        let qh = qh_at.map_or(0u32, |o| {
            u32::from_le_bytes([src[o], src[o + 1], src[o + 2], src[o + 3]])
        });
        for j in 0..16 {
            let mut lo = src[qs_at + j] & 0x0F;
            let mut hi = src[qs_at + j] >> 4;
            if qh_at.is_some() {
                lo |= (((qh >> j) << 4) & 0x10) as u8;
                hi |= ((qh >> (j + 12)) & 0x10) as u8;
            }
            dst[2 + j] = (lo as i8 - zero) as u8;
            dst[2 + j + 16] = (hi as i8 - zero) as u8;
        }
        if has_min {
            offsets[i] = rd(2) + zero as f32 * rd(0);
        }
    }
    Ok(Q8_0Parts {
        blocks,
        offsets: has_min.then_some(offsets),
        n,
        k,
    })
}

/// Concatenates 2-D quantized matrices of the same type and inner dimension along the rows
/// (output dimension): `[n1, k] ++ [n2, k] -> [n1 + n2, k]`.
pub fn concat_rows(parts: &[&QTensor]) -> Result<QTensor, ModelError> {
    let first = parts
        .first()
        .ok_or_else(|| ModelError::Unsupported("concat of zero tensors".into()))?;
    let dtype = first.dtype();
    let (_, k) = first.shape().dims2()?;
    let mut n_total = 0;
    let mut bytes = Vec::new();
    for p in parts {
        let (n, pk) = p.shape().dims2()?;
        if p.dtype() != dtype || pk != k {
            return Err(ModelError::Unsupported(format!(
                "concat of {:?} [{n}, {pk}] with {dtype:?} [_, {k}]",
                p.dtype()
            )));
        }
        n_total += n;
        bytes.extend_from_slice(&p.data()?);
    }
    let storage = QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, dtype)?;
    Ok(QTensor::new(storage, (n_total, k))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    /// The Q8_0 rewrite (plus offsets) reproduces every stored weight exactly.
    #[test]
    fn q8_0_parts_are_exact() {
        let w = Tensor::randn(0f32, 0.1, (8, 64), &Device::Cpu).expect("randn");
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
        ] {
            let q = QTensor::quantize(&w, dtype).expect("quantize");
            let want: Vec<f32> = q
                .dequantize(&Device::Cpu)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1())
                .expect("deq");
            let parts = to_q8_0_parts(&q).expect("convert");
            for r in 0..8 {
                for b in 0..2 {
                    let blk = &parts.blocks[(r * 2 + b) * 34..(r * 2 + b + 1) * 34];
                    let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                    let off = parts.offsets.as_ref().map_or(0.0, |o| o[r * 2 + b]);
                    for j in 0..32 {
                        let got = d * (blk[2 + j] as i8) as f32 + off;
                        let exp = want[r * 64 + b * 32 + j];
                        assert!(
                            (got - exp).abs() <= 1e-6 * exp.abs().max(1e-3),
                            "{dtype:?} [{r}, {}]: {got} vs {exp}",
                            b * 32 + j
                        );
                    }
                }
            }
        }
    }
}
