//! Cluster administration commands: `dtx init`, `dtx add-node`, `dtx user ...` and
//! `dtx wal verify` (they edit or read files; none talks to a running node).

use crate::args::{UserAction, WalAction};
use crate::config_lookup::find_config;
use anyhow::{bail, Context};
use dtx_node::config::{add_node, init, ClusterConfig};
use dtx_node::datadir::WAL_DIR;
use dtx_node::users::{add_user, remove_user, Users};
use dtx_node::wal::verify::{hexdump as hexdump_file, verify};
use std::path::Path;
use std::process::ExitCode;

/// `dtx init`.
pub(crate) fn init_command(
    nodes: usize,
    dir: &Path,
    f: u32,
    names: Option<Vec<String>>,
) -> anyhow::Result<ExitCode> {
    let path = init(dir, nodes, names, f)?;
    println!("wrote {} ({nodes} nodes, F={f})", path.display());
    let config = ClusterConfig::load(&path)?;
    for node in &config.nodes {
        println!(
            "  dtx node --config {} --name {} --data-dir {}",
            path.display(),
            node.name,
            dir.join(&node.name).display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `dtx add-node`.
pub(crate) fn add_node_command(config: &Path, name: &str, role: &str) -> anyhow::Result<ExitCode> {
    let entry = add_node(config, name, role)?;
    println!(
        "added {} (id {}, {}, {}) to {}",
        entry.name,
        entry.id,
        role,
        entry.address,
        config.display()
    );
    println!(
        "  start it: dtx node --config {} --name {} --data-dir DIR",
        config.display(),
        entry.name
    );
    Ok(ExitCode::SUCCESS)
}

/// `dtx wal verify`.
pub(crate) fn wal_command(action: WalAction) -> anyhow::Result<ExitCode> {
    let WalAction::Verify { dir, json, hexdump } = action;
    let wal_dir = if dir.join(WAL_DIR).is_dir() {
        dir.join(WAL_DIR)
    } else {
        dir
    };
    let report = verify(&wal_dir)
        .with_context(|| format!("cannot read the log in {}", wal_dir.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    if let Some(arguments) = hexdump {
        let (file, offset) = match arguments.as_slice() {
            [file, offset] => (file, offset),
            _ => bail!("--hexdump takes FILE OFFSET"),
        };
        let offset: u64 = offset
            .parse()
            .with_context(|| format!("--hexdump offset {offset:?} is not a number"))?;
        print!("{}", hexdump_file(&wal_dir.join(file), offset, 256)?);
    }
    Ok(if report.is_healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `dtx user add | remove | list`.
pub(crate) fn user_command(action: UserAction) -> anyhow::Result<ExitCode> {
    match action {
        UserAction::Add {
            config,
            name,
            allow,
            read,
        } => {
            let config = find_config(config)?;
            let cluster = ClusterConfig::load(&config)?;
            if allow.is_empty() && read.is_empty() {
                bail!("give the user at least one --allow PREFIX or --read PREFIX (\"\" is every key)");
            }
            let user = add_user(&cluster.users_path(), &name, allow, read)?;
            println!(
                "added user {} ({}); key {}",
                user.name,
                user.user_id,
                user.key_file
                    .as_ref()
                    .map(|path| path.display().to_string())
                    .unwrap_or_default()
            );
            println!(
                "  use it: dtx --user {} put --config {} KEY VALUE",
                user.name,
                config.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        UserAction::Remove { config, name } => {
            let config = find_config(config)?;
            let cluster = ClusterConfig::load(&config)?;
            remove_user(&cluster.users_path(), &name)?;
            println!("removed user {name}: running nodes end its sessions now");
            Ok(ExitCode::SUCCESS)
        }
        UserAction::List { config } => {
            let config = find_config(config)?;
            let cluster = ClusterConfig::load(&config)?;
            let users = Users::load(&cluster.users_path())?;
            for user in users.all() {
                let show = |prefixes: &[String]| {
                    prefixes
                        .iter()
                        .map(|prefix| format!("{prefix:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                println!(
                    "{:<16} read-write [{}] read-only [{}]",
                    user.name,
                    show(&user.read_write),
                    show(&user.read_only)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
