//! `cargo run --release -p govlm-inference --example bench -- MODEL.gguf [-p 64,512] [-n 64] [-r 3]`
use std::fs::File;

use govlm_inference::bench::run_bench;
use govlm_inference::model::Model;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args
        .first()
        .ok_or_else(|| anyhow::anyhow!("usage: bench MODEL.gguf [-p 64,512] [-n 64] [-r 3]"))?;
    let (mut pp, mut n, mut r) = (vec![64usize, 512], 64usize, 3usize);
    let mut i = 1;
    while i + 1 < args.len() {
        match args[i].as_str() {
            "-p" => {
                pp = args[i + 1]
                    .split(',')
                    .map(|s| s.parse())
                    .collect::<Result<_, _>>()?
            }
            "-n" => n = args[i + 1].parse()?,
            "-r" => r = args[i + 1].parse()?,
            a => anyhow::bail!("unknown argument {a}"),
        }
        i += 2;
    }
    let mut f = File::open(path)?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut f)?;
    let t = std::time::Instant::now();
    let model = Model::load(&content, &mut f, &candle_core::Device::Cpu)?;
    eprintln!("loaded {path} in {:.2}s", t.elapsed().as_secs_f64());
    for p in pp {
        print!("{}", run_bench(&model, p, 0, r)?);
    }
    print!("{}", run_bench(&model, 0, n, r)?);
    Ok(())
}
