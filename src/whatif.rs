//! `aifinops whatif`: re-prices a month of real usage under other catalog models, service tiers, or a
//! self-hosted option, and prints the comparison per owner.

use std::path::PathBuf;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Lake directory.
    #[arg(long)]
    pub lake: PathBuf,
    /// Month (YYYY-MM).
    #[arg(long)]
    pub month: String,
    /// Replace a model: `FROM=TO` (catalog names; repeatable).
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// Price every call at this service tier instead (`batch`, `flex`, `priority`, `standard`).
    #[arg(long)]
    pub tier: Option<String>,
    /// A self-hosted option `NAME:USD_PER_GPU_HOUR:TOKENS_PER_SEC` (repeatable).
    #[arg(long = "self-hosted")]
    pub self_hosted: Vec<String>,
    /// Price catalog files (LiteLLM JSON or aifinops TOML), on top of the built-in catalog.
    #[arg(long = "prices")]
    pub prices: Vec<PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::bail!("whatif over {} is not implemented yet", args.lake.display())
}
