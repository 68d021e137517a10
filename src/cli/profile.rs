//! Where the CLI connects and with what credentials.
//!
//! Sources, first wins: flags (`--server`), the environment (`CORRAL_SERVER`, `CORRAL_API_KEY`,
//! `CORRAL_TOKEN`), a `.env` file in the working directory (same names; it never overrides the
//! environment), then the named profile (`--profile`, `CORRAL_PROFILE`, default `default`) in
//! the config file that `corral login` writes: `$XDG_CONFIG_HOME/corral/config.toml` or
//! `~/.config/corral/config.toml`, readable by its owner only (0600).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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

/// Reads the environment and the working directory's `.env`.
pub struct Environment {
    dotenv: BTreeMap<String, String>,
}

impl Environment {
    pub fn load() -> Environment {
        let text = std::fs::read_to_string(".env").unwrap_or_default();
        Environment { dotenv: parse_dotenv(&text) }
    }

    /// A variable from the environment, else from `.env`; empty values count as unset.
    pub fn var(&self, name: &str) -> Option<String> {
        std::env::var(name)
            .ok()
            .or_else(|| self.dotenv.get(name).cloned())
            .filter(|value| !value.is_empty())
    }

    pub fn config_path(&self) -> Outcome<PathBuf> {
        if let Some(dir) = self.var("XDG_CONFIG_HOME") {
            return Ok(Path::new(&dir).join("corral").join("config.toml"));
        }
        match self.var("HOME") {
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

/// Where to connect and how to authenticate, from every source.
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
    let server = server_flag
        .map(str::to_string)
        .or_else(|| env.var("CORRAL_SERVER"))
        .or(profile.server)
        .unwrap_or_else(|| DEFAULT_SERVER.to_string());
    let credential = if let Some(key) = env.var("CORRAL_API_KEY") {
        Credential::ApiKey(key)
    } else if let Some(token) = env.var("CORRAL_TOKEN") {
        Credential::Token(token)
    } else if let Some(key) = profile.api_key {
        Credential::ApiKey(key)
    } else if let Some(token) = profile.token {
        Credential::Token(token)
    } else {
        Credential::None
    };
    Ok((server, credential))
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
}
