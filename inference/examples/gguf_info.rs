//! Prints GGUF metadata (except large arrays) and tensor types/shapes.
use candle_core::quantized::gguf_file;
fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1).expect("path");
    let mut f = std::fs::File::open(&path)?;
    let c = gguf_file::Content::read(&mut f)?;
    let mut keys: Vec<_> = c.metadata.keys().collect();
    keys.sort();
    for k in keys {
        let v = &c.metadata[k];
        match v {
            gguf_file::Value::Array(a) => println!("{k}: array[{}]", a.len()),
            v => println!("{k}: {v:?}"),
        }
    }
    let mut counts = std::collections::BTreeMap::new();
    let mut names: Vec<_> = c.tensor_infos.keys().collect();
    names.sort();
    for n in names {
        let t = &c.tensor_infos[n];
        if n.starts_with("blk.0.") || n.starts_with("blk.1.") || !n.starts_with("blk.") {
            println!("{n}: {:?} {:?}", t.ggml_dtype, t.shape);
        }
        *counts.entry(format!("{:?}", t.ggml_dtype)).or_insert(0usize) += 1;
    }
    println!("{counts:?}");
    Ok(())
}
