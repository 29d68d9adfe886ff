use crate::ConvertArgs; pub fn run(_a:&ConvertArgs)->anyhow::Result<std::process::ExitCode>{anyhow::bail!("todo")}
