//! Where the CLI connects and with what credentials.
//!
//! Sources, first wins: flags (`--server`), the environment (`CORRAL_SERVER`, `CORRAL_API_KEY`,
//! `CORRAL_TOKEN`), a `.env` file in the working directory (same names; it never overrides the
//! environment), then the named profile (`--profile`, `CORRAL_PROFILE`, default `default`) in
//! the config file that `corral login` writes: `$XDG_CONFIG_HOME/corral/config.toml` or
//! `~/.config/corral/config.toml`, readable by its owner only (0600).
//!
//! A credential goes only to the server it was given for: the profile's key or token only to
//! the profile's server (compared by scheme, host, port and path), and a key or token from the
//! environment never to a server that only `.env` names. Otherwise a `.env` in a cloned
//! repository could send them elsewhere; such a run fails instead, naming both servers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cli::ExitCode;
use crate::cli::client::{Credential, Failure, Outcome};

/// The server used when nothing names one.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// The config file: named profiles.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub server: Option<String>,
    pub api_key: Option<String>,
    pub token: Option<String>,
    /// Who logged in, for messages.
    pub username: Option<String>,
}

/// Where a setting came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// `--server`.
    Flag,
    /// The process's environment.
    Environment,
    /// The working directory's `.env`.
    DotEnv,
    /// The profile (or, for the server, the default when the profile names none).
    Profile,
}

impl Source {
    /// Where a server named by this source was set, for messages.
    fn server_origin(self) -> &'static str {
        match self {
            Source::Flag => "--server",
            Source::Environment => "CORRAL_SERVER in the environment",
            Source::DotEnv => "CORRAL_SERVER in ./.env",
            Source::Profile => "the profile",
        }
    }
}

/// Reads the environment and the working directory's `.env`.
pub struct Environment {
    /// The process's variables (those that are valid UTF-8), as it started.
    process: BTreeMap<String, String>,
    dotenv: BTreeMap<String, String>,
}

impl Environment {
    /// The process's environment and the working directory's `.env`.
    pub fn load() -> Environment {
        let process: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
            .collect();
        let text = std::fs::read_to_string(".env").unwrap_or_default();
        Environment { process, dotenv: parse_dotenv(&text) }
    }

    /// A variable from the environment, else from `.env`; empty values count as unset.
    pub fn var(&self, name: &str) -> Option<String> {
        self.lookup(name).map(|(value, _)| value)
    }

    /// A variable as `var` finds it, and where it was found.
    fn lookup(&self, name: &str) -> Option<(String, Source)> {
        let found = match self.process.get(name) {
            Some(value) => (value.clone(), Source::Environment),
            None => (self.dotenv.get(name)?.clone(), Source::DotEnv),
        };
        Some(found).filter(|(value, _)| !value.is_empty())
    }

    /// Where profiles are kept; from the process's environment only, so that a `.env` cannot
    /// choose where `corral login` writes a new key.
    pub fn config_path(&self) -> Outcome<PathBuf> {
        let process = |name: &str| self.process.get(name).filter(|value| !value.is_empty());
        if let Some(dir) = process("XDG_CONFIG_HOME") {
            return Ok(Path::new(dir).join("corral").join("config.toml"));
        }
        match process("HOME") {
            Some(home) => Ok(Path::new(&home).join(".config").join("corral").join("config.toml")),
            None => Err(Failure::failed("neither XDG_CONFIG_HOME nor HOME is set")),
        }
    }

    /// The profile name in use.
    pub fn profile_name(&self, flag: Option<&str>) -> String {
        flag.map(str::to_string)
            .or_else(|| self.var("CORRAL_PROFILE"))
            .unwrap_or_else(|| "default".to_string())
    }
}

/// `KEY=VALUE` lines; `#` comments, blank lines, `export ` prefixes and quotes are handled.
pub fn parse_dotenv(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (key, value) = line.split_once('=')?;
            let value = value.trim();
            let unquoted = ['"', '\''].iter().find_map(|quote| {
                value.strip_prefix(*quote).and_then(|rest| rest.strip_suffix(*quote))
            });
            Some((key.trim().to_string(), unquoted.unwrap_or(value).to_string()))
        })
        .collect()
}

impl ConfigFile {
    pub fn read(path: &Path) -> Outcome<ConfigFile> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|err| {
                Failure::failed(format!("{} is not a valid corral config: {err}", path.display()))
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
            Err(err) => Err(Failure::failed(format!("reading {}: {err}", path.display()))),
        }
    }

    /// Writes the file, readable and writable by its owner only.
    pub fn write(&self, path: &Path) -> Outcome<()> {
        let text = toml::to_string(self).map_err(|err| Failure::failed(err.to_string()))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let temporary = path.with_extension("toml.tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temporary)?;
        #[cfg(unix)]
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        std::io::Write::write_all(&mut file, text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        Ok(())
    }
}

/// Where to connect and how to authenticate, from every source; a credential for another
/// server than the one in use is refused (`check_destination`).
pub fn resolve(
    env: &Environment,
    server_flag: Option<&str>,
    profile_flag: Option<&str>,
) -> Outcome<(String, Credential)> {
    let name = env.profile_name(profile_flag);
    let config = ConfigFile::read(&env.config_path()?)?;
    let profile = config.profiles.get(&name).cloned();
    if profile.is_none() && profile_flag.is_some() {
        return Err(Failure::usage(format!(
            "no profile named '{name}'; create it with `corral login --profile {name}`"
        )));
    }
    let profile = profile.unwrap_or_default();
    let profile_server = profile.server.unwrap_or_else(|| DEFAULT_SERVER.to_string());
    let profile_holds_credential = profile.api_key.is_some() || profile.token.is_some();
    let (server, server_source) = match server_flag {
        Some(flag) => (flag.to_string(), Source::Flag),
        None => {
            env.lookup("CORRAL_SERVER").unwrap_or_else(|| (profile_server.clone(), Source::Profile))
        }
    };
    let (credential, credential_source) = env
        .lookup("CORRAL_API_KEY")
        .map(|(key, source)| (Credential::ApiKey(key), source))
        .or_else(|| {
            env.lookup("CORRAL_TOKEN").map(|(token, source)| (Credential::Token(token), source))
        })
        .or_else(|| profile.api_key.map(|key| (Credential::ApiKey(key), Source::Profile)))
        .or_else(|| profile.token.map(|token| (Credential::Token(token), Source::Profile)))
        .unwrap_or((Credential::None, Source::Profile));
    check_destination(
        &credential,
        credential_source,
        &server,
        server_source,
        &name,
        &profile_server,
    )?;
    if credential_source == Source::DotEnv
        && profile_holds_credential
        && same_server(&server, &profile_server)
    {
        // The repository's own key would stand in for the user's on the user's server: they
        // would act, unknowingly, as whoever wrote the .env.
        return Err(Failure::new(
            ExitCode::Auth,
            format!(
                "./.env sets a credential for {server}, for which profile '{name}' holds yours; \
                 corral does not swap it in. Remove it from ./.env, or use another --profile, \
                 or set CORRAL_API_KEY / CORRAL_TOKEN in the environment."
            ),
        ));
    }
    Ok((server, credential))
}

/// The server `corral login` sends a password to: `--server`, else `CORRAL_SERVER`, else the
/// profile's (`profile_server`), else the default. A server only `./.env` names is refused
/// unless it is the profile's own: a cloned repository must not collect passwords.
pub fn login_server(
    env: &Environment,
    server_flag: Option<&str>,
    profile_server: Option<&str>,
) -> Outcome<String> {
    let profile_server = profile_server.unwrap_or(DEFAULT_SERVER);
    if let Some(flag) = server_flag {
        return Ok(flag.to_string());
    }
    match env.lookup("CORRAL_SERVER") {
        None => Ok(profile_server.to_string()),
        Some((server, Source::DotEnv)) if !same_server(&server, profile_server) => {
            Err(Failure::usage(format!(
                "./.env names CORRAL_SERVER={server}, and corral login sends a password only to \
                 a server named by --server, CORRAL_SERVER in the environment or the profile \
                 ({profile_server}); pass --server {server} if that server is meant"
            )))
        }
        Some((server, _)) => Ok(server),
    }
}

/// Refuses to send a credential to a server it was not given for: the profile's goes only to
/// the profile's server, and one from the environment never to a server only `.env` names.
fn check_destination(
    credential: &Credential,
    credential_source: Source,
    server: &str,
    server_source: Source,
    profile: &str,
    profile_server: &str,
) -> Outcome<()> {
    let (what, variable) = match credential {
        Credential::ApiKey(_) => ("an API key", "CORRAL_API_KEY"),
        Credential::Token(_) => ("a token", "CORRAL_TOKEN"),
        Credential::None => return Ok(()),
    };
    let refusal = match credential_source {
        Source::Profile if !same_server(server, profile_server) => format!(
            "profile '{profile}' holds {what} for {profile_server}, but the server is {server} \
             ({origin}); a stored credential is only sent to the server it was stored for.\n  \
             To use {server}: set CORRAL_API_KEY or CORRAL_TOKEN for it, or run \
             `corral login --server {server} --profile <new profile>`.\n  \
             To use the profile: pass --server {profile_server}.",
            origin = server_source.server_origin(),
        ),
        Source::Environment if server_source == Source::DotEnv => format!(
            "{variable} from the environment is not sent to {server}, which only ./.env names \
             (CORRAL_SERVER); if that server is meant, pass --server {server} or set \
             CORRAL_SERVER in the environment."
        ),
        // A repository's own key would make the user act, on their own server, as whoever
        // wrote it: a .env credential goes only with a server that .env (or --server) names.
        Source::DotEnv if !matches!(server_source, Source::DotEnv | Source::Flag) => format!(
            "{variable} from ./.env is not sent to {server} ({origin}), which ./.env does not \
             name; set CORRAL_SERVER in ./.env too, or pass --server.",
            origin = server_source.server_origin(),
        ),
        _ => return Ok(()),
    };
    Err(Failure::new(ExitCode::Auth, refusal))
}

/// Whether two server URLs name the same server: scheme, host, port (written or the scheme's
/// default) and path without its trailing slash. What does not parse as a URL compares as text.
fn same_server(a: &str, b: &str) -> bool {
    /// The parts of a URL that decide where requests go.
    fn parts(server: &str) -> Option<(String, String, Option<u16>, String)> {
        let url = url::Url::parse(server.trim()).ok()?;
        let host = url.host_str()?.to_string();
        let path = url.path().trim_end_matches('/').to_string();
        Some((url.scheme().to_string(), host, url.port_or_known_default(), path))
    }
    match (parts(a), parts(b)) {
        (Some(a), Some(b)) => a == b,
        _ => a.trim().trim_end_matches('/') == b.trim().trim_end_matches('/'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_lines_are_read_like_a_shell_would() {
        let parsed = parse_dotenv(
            "# corral\nCORRAL_SERVER=http://corral:8080\nexport CORRAL_API_KEY=\"crl_x\"\n\n\
             AWS_REGION = 'eu-west-1'\nnot a pair\n",
        );
        assert_eq!(parsed["CORRAL_SERVER"], "http://corral:8080");
        assert_eq!(parsed["CORRAL_API_KEY"], "crl_x");
        assert_eq!(parsed["AWS_REGION"], "eu-west-1");
        assert_eq!(parsed.len(), 3);
    }

    #[test]
    #[cfg(unix)]
    fn the_config_file_is_private_to_its_owner_and_reads_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corral").join("config.toml");
        let mut config = ConfigFile::default();
        let profile = Profile {
            server: Some("http://a:1".into()),
            api_key: Some("k".into()),
            ..Profile::default()
        };
        config.profiles.insert("staging".into(), profile);
        config.write(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let read = ConfigFile::read(&path).unwrap();
        assert_eq!(read.profiles["staging"].api_key.as_deref(), Some("k"));
    }

    /// An environment of `process` variables and a `.env` reading `dotenv`, with a home of its
    /// own whose `default` profile is `profile`.
    fn setup(
        profile: &Profile,
        process: &[(&str, &str)],
        dotenv: &str,
    ) -> (tempfile::TempDir, Environment) {
        let home = tempfile::tempdir().unwrap();
        let mut config = ConfigFile::default();
        config.profiles.insert("default".into(), profile.clone());
        config.write(&home.path().join(".config").join("corral").join("config.toml")).unwrap();
        let mut process: BTreeMap<String, String> =
            process.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
        process.insert("HOME".into(), home.path().to_str().unwrap().to_string());
        (home, Environment { process, dotenv: parse_dotenv(dotenv) })
    }

    /// A profile that logged in to `https://corral.internal`.
    fn stored(api_key: Option<&str>, token: Option<&str>) -> Profile {
        Profile {
            server: Some("https://corral.internal".into()),
            api_key: api_key.map(str::to_string),
            token: token.map(str::to_string),
            username: Some("dana".into()),
        }
    }

    /// Resolves for the `default` profile; the server and what would be sent to it.
    fn sent(
        profile: &Profile,
        process: &[(&str, &str)],
        dotenv: &str,
        flag: Option<&str>,
    ) -> (String, String) {
        let (_home, env) = setup(profile, process, dotenv);
        let (server, credential) = resolve(&env, flag, None).unwrap();
        let credential = match credential {
            Credential::ApiKey(key) => format!("key {key}"),
            Credential::Token(token) => format!("token {token}"),
            Credential::None => "nothing".to_string(),
        };
        (server, credential)
    }

    /// Resolves for the `default` profile, expecting a refusal.
    fn refused(
        profile: &Profile,
        process: &[(&str, &str)],
        dotenv: &str,
        flag: Option<&str>,
    ) -> Failure {
        let (_home, env) = setup(profile, process, dotenv);
        resolve(&env, flag, None).unwrap_err()
    }

    /// An expected server and credential.
    fn pair(server: &str, credential: &str) -> (String, String) {
        (server.to_string(), credential.to_string())
    }

    #[test]
    fn login_never_sends_a_password_to_a_server_only_dotenv_names() {
        let (_home, env) =
            setup(&stored(None, None), &[], "CORRAL_SERVER=https://attacker.example\n");
        let failure = login_server(&env, None, Some("https://corral.internal")).unwrap_err();
        assert!(failure.message.contains("https://attacker.example"), "{}", failure.message);
        // Named by the user, it is used; the profile's own server in .env is fine too.
        let chosen = login_server(&env, Some("https://attacker.example"), None).unwrap();
        assert_eq!(chosen, "https://attacker.example");
        let (_home, env) =
            setup(&stored(None, None), &[], "CORRAL_SERVER=https://corral.internal/\n");
        let chosen = login_server(&env, None, Some("https://corral.internal")).unwrap();
        assert_eq!(chosen, "https://corral.internal/");
        let (_home, env) =
            setup(&stored(None, None), &[("CORRAL_SERVER", "https://b.example")], "");
        assert_eq!(login_server(&env, None, None).unwrap(), "https://b.example");
    }

    #[test]
    fn a_dotenv_key_does_not_go_to_a_server_dotenv_does_not_name() {
        let profile = stored(None, None);
        let failure = refused(&profile, &[], "CORRAL_API_KEY=crl_theirs\n", None);
        assert!(failure.message.contains("from ./.env is not sent to"), "{}", failure.message);
        let dotenv = "CORRAL_API_KEY=crl_theirs\nCORRAL_SERVER=https://their.example\n";
        assert_eq!(
            sent(&profile, &[], dotenv, None),
            pair("https://their.example", "key crl_theirs")
        );
    }

    #[test]
    fn a_dotenv_key_does_not_stand_in_for_the_profiles_own() {
        let profile = stored(Some("crl_mine"), None);
        let dotenv = "CORRAL_API_KEY=crl_theirs\nCORRAL_SERVER=https://corral.internal\n";
        let failure = refused(&profile, &[], dotenv, None);
        assert!(failure.message.contains("does not swap it in"), "{}", failure.message);
    }

    #[test]
    fn dotenv_cannot_choose_where_profiles_are_written() {
        let (home, env) = setup(&stored(None, None), &[], "XDG_CONFIG_HOME=./repo\nHOME=./repo\n");
        let path = env.config_path().unwrap();
        assert!(path.starts_with(home.path()), "{}", path.display());
    }

    #[test]
    fn a_stored_credential_is_not_sent_to_a_server_named_elsewhere() {
        let attacks = [
            // A cloned repository's .env.
            (".env", "https://attacker.example"),
            // The profile's host as the user name of another host; another port; another scheme.
            (".env", "https://corral.internal@attacker.example"),
            (".env", "https://corral.internal:8443"),
            ("environment", "http://corral.internal"),
            // A flag, even one the user typed.
            ("flag", "https://attacker.example"),
        ];
        for profile in [stored(Some("crl_stored"), None), stored(None, Some("stored-token"))] {
            for (place, server) in attacks {
                let dotenv = if place == ".env" {
                    format!("CORRAL_SERVER={server}\n")
                } else {
                    String::new()
                };
                let process: Vec<(&str, &str)> = (place == "environment")
                    .then_some(("CORRAL_SERVER", server))
                    .into_iter()
                    .collect();
                let flag = (place == "flag").then_some(server);
                let failure = refused(&profile, &process, &dotenv, flag);
                let message = &failure.message;
                assert_eq!(failure.code, ExitCode::Auth, "{message}");
                assert!(message.contains(&format!("the server is {server} (")), "{message}");
                assert!(message.contains("for https://corral.internal, but"), "{message}");
                assert!(message.contains("CORRAL_API_KEY") && message.contains("corral login"));
                assert!(message.contains("--server https://corral.internal."), "{message}");
                assert!(!message.contains("crl_stored") && !message.contains("stored-token"));
            }
        }
    }

    #[test]
    fn a_stored_credential_goes_to_its_own_server_however_it_is_written() {
        let profile = stored(Some("crl_stored"), None);
        let key = "key crl_stored";
        let server = "https://corral.internal";
        assert_eq!(sent(&profile, &[], "", None), pair(server, key));
        let dotenv = "CORRAL_SERVER=HTTPS://Corral.Internal:443/\n";
        assert_eq!(sent(&profile, &[], dotenv, None), pair("HTTPS://Corral.Internal:443/", key));
        let process = [("CORRAL_SERVER", "https://corral.internal/")];
        assert_eq!(sent(&profile, &process, "", None), pair("https://corral.internal/", key));
        // The user's flag wins over the .env, and names the profile's server.
        let dotenv = "CORRAL_SERVER=https://attacker.example\n";
        assert_eq!(sent(&profile, &[], dotenv, Some(server)), pair(server, key));
        // A profile naming no server logged in to the default one.
        let serverless = Profile { server: None, ..profile.clone() };
        let dotenv = format!("CORRAL_SERVER={DEFAULT_SERVER}/\n");
        assert_eq!(sent(&serverless, &[], &dotenv, None), pair(&format!("{DEFAULT_SERVER}/"), key));
    }

    #[test]
    fn a_credential_given_with_its_server_is_sent_there() {
        let profile = stored(Some("crl_stored"), None);
        let other = "https://other.example";
        // A .env naming both sends its own key; the profile's stays home.
        let dotenv = format!("CORRAL_SERVER={other}\nCORRAL_API_KEY=crl_dotenv\n");
        assert_eq!(sent(&profile, &[], &dotenv, None), pair(other, "key crl_dotenv"));
        // The environment naming both.
        let process = [("CORRAL_SERVER", other), ("CORRAL_TOKEN", "env-token")];
        assert_eq!(sent(&profile, &process, "", None), pair(other, "token env-token"));
        // A flag, with a key from the environment.
        let process = [("CORRAL_API_KEY", "crl_env")];
        assert_eq!(sent(&profile, &process, "", Some(other)), pair(other, "key crl_env"));
        // Nothing stored, nothing to keep: the server will ask for credentials itself.
        let dotenv = format!("CORRAL_SERVER={other}\n");
        assert_eq!(sent(&Profile::default(), &[], &dotenv, None), pair(other, "nothing"));
    }

    #[test]
    fn a_dotenv_server_does_not_receive_the_environments_credential() {
        let dotenv = "CORRAL_SERVER=https://attacker.example\n";
        for (variable, secret) in [("CORRAL_API_KEY", "crl_env"), ("CORRAL_TOKEN", "env-token")] {
            let failure = refused(&Profile::default(), &[(variable, secret)], dotenv, None);
            let message = &failure.message;
            assert_eq!(failure.code, ExitCode::Auth, "{message}");
            assert!(message.contains(variable) && message.contains("https://attacker.example"));
            assert!(message.contains("--server") && !message.contains(secret), "{message}");
        }
    }
}
