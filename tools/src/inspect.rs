use crate::InspectArgs; pub fn run(_a:&InspectArgs)->anyhow::Result<std::process::ExitCode>{anyhow::bail!("todo")}
