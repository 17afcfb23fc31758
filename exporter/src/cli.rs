//! The command line, built from the settings table so that every setting
//! has its flag, and `--help` names its variable and default.

use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Command};
use pmoas_collectors::CATALOG;
use pmoas_config::settings::{self, Kind};
use pmoas_config::{Config, Overrides};

pub const ABOUT: &str = "eBPF exporter for the pods of a node and their sidecar proxies";

/// The capabilities come from the one list the collectors' advice and the
/// README use too.
fn long_about() -> String {
    let caps: Vec<&str> = pmoas_collectors::ebpf::REQUIRED_CAPABILITIES.iter().map(|(c, _)| *c).collect();
    format!(
        "\
pmoas-exporter watches the pods of this node with eBPF and serves Prometheus metrics:
per pod and container, sidecar versus app, what the service mesh costs.

It needs root or these capabilities (the README says what each is for):
  {}
and a kernel with BTF and a cgroup v2 mount (hybrid v1+v2 hosts are fine). Without
Kubernetes it names workloads from cgroup paths and processes.

Every setting is a flag, a key of the --config.file TOML file and a PMOAS_* variable:
  --web.listen-address  <->  [web] listen_address  <->  PMOAS_WEB_LISTEN_ADDRESS
Flags beat variables, variables beat the file, the file beats the defaults.",
        caps.join(", ")
    )
}

const AFTER_HELP: &str = "\
Endpoints: /metrics (Prometheus text, or OpenMetrics when asked; ?collect[]=socket and
?exclude[]=socket pick collectors), / (collectors and their eBPF programs), /healthz, /readyz.

Examples:
  pmoas-exporter                                   default collectors on :8765
  pmoas-exporter --collectors socket --web.listen-address 127.0.0.1:9100
  pmoas-exporter --config.file /etc/pmoas.toml --config.check";

/// What the command line asks for.
pub enum Invocation {
    Run(Box<RunArgs>),
    Version,
    Completion(clap_complete::Shell),
}

pub struct RunArgs {
    pub config_file: Option<PathBuf>,
    pub check_only: bool,
    pub overrides: Overrides,
}

fn defaults() -> toml::Value {
    toml::Value::try_from(Config::default()).expect("defaults serialize")
}

fn default_of(defaults: &toml::Value, key: &str) -> Option<String> {
    let mut v = defaults;
    for part in key.split('.') {
        v = v.get(part)?;
    }
    Some(match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// The clap command (also used for shell completions).
pub fn command() -> Command {
    let defaults = defaults();
    let mut cmd = Command::new("pmoas-exporter")
        .version(env!("CARGO_PKG_VERSION"))
        .about(ABOUT)
        .long_about(long_about())
        .after_help(AFTER_HELP)
        .args_conflicts_with_subcommands(true)
        .subcommand(Command::new("version").about("Print version, git revision and build details"))
        .subcommand(
            Command::new("completion")
                .about("Print a shell completion script")
                .arg(Arg::new("shell").required(true).value_parser(clap::value_parser!(clap_complete::Shell))),
        )
        .next_help_heading("Configuration")
        .arg(
            Arg::new("config.file")
                .long("config.file")
                .value_name("PATH")
                .env("PMOAS_CONFIG_FILE")
                .hide_env_values(true)
                .value_parser(clap::value_parser!(PathBuf))
                .help("TOML file with any of the settings below (see config/pmoas.example.toml)"),
        )
        .arg(
            Arg::new("config.check")
                .long("config.check")
                .action(ArgAction::SetTrue)
                .help("Load and check the configuration, print the effective one, and exit"),
        );

    for s in settings::all() {
        let env = s.env_var();
        cmd = cmd.next_help_heading(s.heading());
        match s.kind {
            Kind::Value => {
                let mut help = s.help.to_string();
                if s.key == "collectors" {
                    help.push_str(&format!(
                        " [valid: {}]",
                        CATALOG.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
                    ));
                }
                help.push_str(&format!(" [env: {env}]"));
                if let Some(d) = default_of(&defaults, s.key) {
                    help.push_str(&format!(" [default: {d}]"));
                }
                if let Some(b) = s.bounds {
                    help.push_str(&format!(" [range: {}]", b.describe()));
                }
                let mut arg = Arg::new(s.key)
                    .long(s.long())
                    .value_name(s.value_name)
                    .num_args(1)
                    // `--scrape.timeout -5s` reaches the range check and its
                    // message, instead of clap's "unexpected argument '-5'".
                    .allow_hyphen_values(s.bounds.is_some())
                    .help(help);
                if let Some(alias) = s.alias {
                    arg = arg.visible_alias(alias);
                }
                cmd = cmd.arg(arg);
            }
            Kind::Repeated(_) => {
                let mut help = format!("{} [env: {env}]", s.help);
                if let Some(d) = default_of(&defaults, s.key).filter(|d| d != "[]") {
                    help.push_str(&format!(" [default: {d}]"));
                }
                cmd = cmd.arg(
                    Arg::new(s.key)
                        .long(s.long())
                        .value_name(s.value_name)
                        .num_args(1)
                        .action(ArgAction::Append)
                        .help(help),
                );
            }
            Kind::Switch => {
                cmd = cmd.arg(
                    Arg::new(s.key)
                        .long(s.long())
                        .action(ArgAction::SetTrue)
                        .help(format!("{} [env: {env}=true]", s.help)),
                );
            }
            Kind::CollectorToggle => {
                let name = s.key.trim_start_matches("collector.").trim_end_matches(".enabled");
                let info = CATALOG.iter().find(|c| c.name == name).expect("toggle of a catalogued collector");
                let default = if info.default_enabled { "enabled" } else { "disabled" };
                let no_id: &'static str = Box::leak(format!("no-{}", s.key).into_boxed_str());
                let mut on = Arg::new(s.key)
                    .long(s.long())
                    .action(ArgAction::SetTrue)
                    .help(format!("Enable the {name} collector: {} [default: {default}] [env: {env}=true]", info.help));
                if let Some(alias) = s.alias {
                    on = on.visible_alias(alias);
                }
                cmd = cmd.arg(on).arg(
                    Arg::new(no_id)
                        .long(format!("no-{}", s.long()))
                        .action(ArgAction::SetTrue)
                        .conflicts_with(s.key)
                        .help(format!("Disable the {name} collector [env: {env}=false]")),
                );
            }
        }
    }
    cmd
}

/// Parses the process's arguments (exits with clap's message on error).
pub fn parse() -> Invocation {
    from_matches(command().get_matches())
}

/// Parses given arguments (tests).
#[cfg(test)]
pub fn try_parse<I, T>(args: I) -> Result<Invocation, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    command().try_get_matches_from(args).map(from_matches)
}

fn from_matches(m: ArgMatches) -> Invocation {
    match m.subcommand() {
        Some(("version", _)) => return Invocation::Version,
        Some(("completion", sub)) => {
            return Invocation::Completion(*sub.get_one::<clap_complete::Shell>("shell").expect("required"));
        }
        _ => {}
    }
    let mut overrides: Overrides = Vec::new();
    for s in settings::all() {
        match s.kind {
            Kind::Value => {
                if let Some(v) = m.get_one::<String>(s.key) {
                    overrides.push((s.key, v.clone()));
                }
            }
            Kind::Repeated(separator) => {
                if let Some(vs) = m.get_many::<String>(s.key) {
                    overrides.push((s.key, vs.cloned().collect::<Vec<_>>().join(separator)));
                }
            }
            Kind::Switch => {
                if m.get_flag(s.key) {
                    overrides.push((s.key, "true".into()));
                }
            }
            Kind::CollectorToggle => {
                let no_id = format!("no-{}", s.key);
                if m.get_flag(s.key) {
                    overrides.push((s.key, "true".into()));
                } else if m.get_flag(&no_id) {
                    overrides.push((s.key, "false".into()));
                }
            }
        }
    }
    Invocation::Run(Box::new(RunArgs {
        config_file: m.get_one::<PathBuf>("config.file").cloned(),
        check_only: m.get_flag("config.check"),
        overrides,
    }))
}

/// `pmoas-exporter version`.
pub fn version_text() -> String {
    format!(
        "pmoas-exporter {} (revision {}, {}, {})",
        env!("CARGO_PKG_VERSION"),
        env!("PMOAS_REVISION"),
        env!("PMOAS_RUSTC"),
        env!("PMOAS_TARGET")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> RunArgs {
        match try_parse(std::iter::once("pmoas-exporter").chain(args.iter().copied())).unwrap() {
            Invocation::Run(r) => *r,
            _ => panic!("not a run"),
        }
    }

    #[test]
    fn flags_become_overrides() {
        let r = run(&[
            "--collectors",
            "socket",
            "--web.listen-address",
            "127.0.0.1:1",
            "--no-collector.socket",
            "--collector.disable-defaults",
            "--collector.socket.max-series",
            "128",
        ]);
        assert_eq!(
            r.overrides,
            vec![
                ("collectors", "socket".to_string()),
                ("collector.disable_defaults", "true".to_string()),
                ("collector.socket.enabled", "false".to_string()),
                ("collector.socket.max_series", "128".to_string()),
                ("web.listen_address", "127.0.0.1:1".to_string()),
            ]
        );
        let c = Config::load(None, &[], &r.overrides).unwrap();
        assert!(c.enabled_collectors().unwrap().is_empty());
    }

    #[test]
    fn with_sockops_is_the_sockops_toggle() {
        let r = run(&["--with-sockops"]);
        assert_eq!(r.overrides, vec![("collector.sockops.enabled", "true".to_string())]);
        let c = Config::load(None, &[], &r.overrides).unwrap();
        let names = |c: &Config| c.enabled_collectors().unwrap().iter().map(|i| i.name).collect::<Vec<_>>();
        let enabled = names(&c);
        assert!(enabled.contains(&"sockops") && enabled.contains(&"socket"), "added to the defaults: {enabled:?}");
        assert!(!names(&Config::load(None, &[], &Vec::new()).unwrap()).contains(&"sockops"), "opt-in");
        assert!(try_parse(["pmoas-exporter", "--with-sockops", "--no-collector.sockops"]).is_err());
    }

    #[test]
    fn enable_and_disable_conflict() {
        assert!(try_parse(["pmoas-exporter", "--collector.socket", "--no-collector.socket"]).is_err());
    }

    #[test]
    fn subcommands() {
        assert!(matches!(try_parse(["pmoas-exporter", "version"]).unwrap(), Invocation::Version));
        assert!(matches!(try_parse(["pmoas-exporter", "completion", "bash"]).unwrap(), Invocation::Completion(_)));
        assert!(try_parse(["pmoas-exporter", "completion", "tcsh"]).is_err());
    }

    #[test]
    fn help_teaches_every_setting_and_collector() {
        // Compare with line wrapping undone.
        let help = command().render_long_help().to_string().split_whitespace().collect::<Vec<_>>().join(" ");
        for s in settings::all() {
            assert!(help.contains(&s.flag()), "--help lacks {}", s.flag());
            assert!(help.contains(&s.env_var()), "--help lacks {}", s.env_var());
        }
        for c in CATALOG {
            let one_line = c.help.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(help.contains(&one_line), "--help lacks the {} collector's description", c.name);
            assert!(help.contains(&format!("--no-collector.{}", c.name)));
        }
        assert!(help.contains("[default: :8765]"), "{help}");
        let valid = CATALOG.iter().map(|c| c.name).collect::<Vec<_>>().join(", ");
        assert!(help.contains(&format!("[valid: {valid}]")) && valid.starts_with("socket, cgroup"), "{help}");
        // Each collector's own settings, with their bounds, as its module declares them.
        for spec in pmoas_collectors::SPECS {
            for s in spec.settings {
                assert!(help.contains(&s.flag()), "--help lacks {} of the {} collector", s.flag(), spec.info.name);
                if let Some(b) = s.bounds {
                    assert!(help.contains(&format!("[range: {}]", b.describe())), "{}", s.key);
                }
            }
        }
    }
}
