//! `aifinops forecast`: month-end projection per owner from the lake (see aifinops_aggregate::forecast).

use std::path::PathBuf;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Lake directory.
    #[arg(long)]
    pub lake: PathBuf,
    /// Only this owner (default: every owner and the total).
    #[arg(long)]
    pub owner: Option<String>,
    /// Month to project (YYYY-MM); default the month of the lake's last complete day.
    #[arg(long)]
    pub month: Option<String>,
    /// Configuration file, for the month budgets to compare against.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::bail!("forecast for {} is not implemented yet", args.lake.display())
}
