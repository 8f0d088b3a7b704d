//! Reading GGUF files: metadata helpers, tensor loading and tensor type conversion at load.
//!
//! candle's CPU kernels are fast for Q8_0 (AVX512-VNNI repacked tiles when the inner dimension
//! is a multiple of 256) and for the k-quants, but scalar for Q4_0/Q4_1/Q5_0/Q5_1. The small
//! models we serve store most matrices in those formats (SmolLM2: Q4_1, Qwen2.5 / Gemma 3: Q5_0),
//! so [`to_q8_0_padded`] rewrites them at load as Q8_0 with the inner dimension zero-padded to a
//! multiple of [`K_ALIGN`]:
//! - Q4_0, Q5_0, Q8_0 -> Q8_0 is exact (same block scale, integer values fit in i8).
//! - Q4_1, Q5_1 (`d * q + m`) are dequantized per 32-value block and requantized to Q8_0
//!   (round to nearest, scale `amax / 127`). The added error is below 1/250 of the block's
//!   largest magnitude, about 3% of the 4-bit format's own rounding error.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{Read, Seek};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::Device;
use half::f16;

use crate::model::ModelError;

/// Inner-dimension alignment of converted Q8_0 matrices: candle's repacked VNNI kernels need
/// `k % 256 == 0` (activations are quantized in 256-value Q8K blocks).
pub const K_ALIGN: usize = 32;

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
        _ => return Err(ModelError::InvalidMetadata(format!("{key}: expected an integer, got {v:?}"))),
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
        v => Err(ModelError::InvalidMetadata(format!("{key}: expected a string, got {v:?}"))),
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
    Ok(t.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?)
}

/// True for the 32-value block formats that [`to_q8_0_padded`] converts (candle has no SIMD
/// kernels for Q4_1/Q5_0/Q5_1, and Q4_0/Q8_0 get the VNNI path only as aligned Q8_0).
pub fn converts_to_q8_0(dtype: GgmlDType) -> bool {
    matches!(
        dtype,
        GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 | GgmlDType::Q8_0
    )
}

/// Rounds `k` up to a multiple of [`K_ALIGN`].
pub fn padded_k(k: usize) -> usize {
    k.div_ceil(K_ALIGN) * K_ALIGN
}

/// Converts a 2-D `[n, k]` matrix in Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 to Q8_0 of shape `[n, padded_k(k)]`
/// (padding columns are zero). Errors: `Unsupported` for other types or a `k` not a multiple
/// of 32.
pub fn to_q8_0_padded(t: &QTensor) -> Result<QTensor, ModelError> {
    let dtype = t.dtype();
    let (n, k) = t.shape().dims2()?;
    if !converts_to_q8_0(dtype) || k % 32 != 0 {
        return Err(ModelError::Unsupported(format!(
            "conversion of {dtype:?} [{n}, {k}] to Q8_0"
        )));
    }
    let kp = padded_k(k);
    let in_block = dtype.type_size();
    let blocks_in = k / 32;
    let blocks_out = kp / 32;
    let data = t.data()?;
    if data.len() != n * blocks_in * in_block {
        return Err(ModelError::Unsupported(format!(
            "{dtype:?} tensor of {} bytes for shape [{n}, {k}]",
            data.len()
        )));
    }
    let mut out = vec![0u8; n * blocks_out * Q8_0_BLOCK_BYTES];
    let mut vals = [0f32; 32];
    let mut qs = [0i8; 32];
    for row in 0..n {
        for b in 0..blocks_in {
            let src = &data[(row * blocks_in + b) * in_block..(row * blocks_in + b + 1) * in_block];
            let dst = &mut out[(row * blocks_out + b) * Q8_0_BLOCK_BYTES
                ..(row * blocks_out + b + 1) * Q8_0_BLOCK_BYTES];
            let rd = |i: usize| f16::from_le_bytes([src[i], src[i + 1]]);
            match dtype {
                GgmlDType::Q8_0 => dst.copy_from_slice(src),
                GgmlDType::Q4_0 => {
                    dst[..2].copy_from_slice(&src[..2]);
                    for j in 0..16 {
                        dst[2 + j] = ((src[2 + j] & 0x0F) as i8 - 8) as u8;
                        dst[2 + j + 16] = ((src[2 + j] >> 4) as i8 - 8) as u8;
                    }
                }
                GgmlDType::Q5_0 => {
                    dst[..2].copy_from_slice(&src[..2]);
                    let qh = u32::from_le_bytes([src[2], src[3], src[4], src[5]]);
                    for j in 0..16 {
                        let h0 = (((qh >> j) << 4) & 0x10) as u8;
                        let h1 = ((qh >> (j + 12)) & 0x10) as u8;
                        dst[2 + j] = (((src[6 + j] & 0x0F) | h0) as i8 - 16) as u8;
                        dst[2 + j + 16] = (((src[6 + j] >> 4) | h1) as i8 - 16) as u8;
                    }
                }
                GgmlDType::Q4_1 | GgmlDType::Q5_1 => {
                    let d = rd(0).to_f32();
                    let m = rd(2).to_f32();
                    if dtype == GgmlDType::Q4_1 {
                        for j in 0..16 {
                            vals[j] = d * (src[4 + j] & 0x0F) as f32 + m;
                            vals[j + 16] = d * (src[4 + j] >> 4) as f32 + m;
                        }
                    } else {
                        let qh = u32::from_le_bytes([src[4], src[5], src[6], src[7]]);
                        for j in 0..16 {
                            let h0 = (((qh >> j) << 4) & 0x10) as u8;
                            let h1 = ((qh >> (j + 12)) & 0x10) as u8;
                            vals[j] = d * ((src[8 + j] & 0x0F) | h0) as f32 + m;
                            vals[j + 16] = d * ((src[8 + j] >> 4) | h1) as f32 + m;
                        }
                    }
                    let amax = vals.iter().fold(0f32, |a, &v| a.max(v.abs()));
                    let scale = amax / 127.0;
                    let scale_h = f16::from_f32(scale);
                    // Quantize against the f16-rounded scale actually stored.
                    let s = scale_h.to_f32();
                    let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
                    for j in 0..32 {
                        qs[j] = (vals[j] * inv).round().clamp(-127.0, 127.0) as i8;
                    }
                    dst[..2].copy_from_slice(&scale_h.to_le_bytes());
                    for j in 0..32 {
                        dst[2 + j] = qs[j] as u8;
                    }
                }
                _ => unreachable!("checked by converts_to_q8_0"),
            }
        }
        // Padding blocks stay all-zero (scale 0, values 0).
    }
    let storage = QStorage::from_data(Cow::Owned(out), &Device::Cpu, GgmlDType::Q8_0)?;
    Ok(QTensor::new(storage, (n, kp))?)
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
