//! The HTTP client behind every CLI command: one server, one credential, JSON in and out, and
//! the API's problem details turned into errors that carry the CLI's exit code. Answers are
//! read as the type the caller names: the API's own wire types (`crate::wire`) where they are
//! shared, JSON values elsewhere.

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::cli::ExitCode;

/// How the client proves who it is.
#[derive(Debug, Clone)]
pub enum Credential {
    ApiKey(String),
    Token(String),
    None,
}

/// A failed command: what to print on stderr, and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: ExitCode,
    pub message: String,
}

impl Failure {
    pub fn new(code: ExitCode, message: impl Into<String>) -> Failure {
        Failure { code, message: message.into() }
    }

    pub fn usage(message: impl Into<String>) -> Failure {
        Failure::new(ExitCode::Usage, message)
    }

    pub fn failed(message: impl Into<String>) -> Failure {
        Failure::new(ExitCode::Failed, message)
    }
}

impl From<std::io::Error> for Failure {
    /// A closed pipe (`corral … | head`) ends the command successfully: the reader has what it
    /// wanted.
    fn from(err: std::io::Error) -> Failure {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            Failure::new(ExitCode::Success, "")
        } else {
            Failure::failed(err.to_string())
        }
    }
}

pub type Outcome<T> = Result<T, Failure>;

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    credential: Credential,
}

impl Client {
    pub fn new(base: &str, credential: Credential) -> Outcome<Client> {
        let tls =
            crate::tls_client_config().map_err(|err| Failure::failed(format!("TLS: {err}")))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .user_agent(concat!("corral-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(10))
            // A redirect could carry the API key or a password to another server.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|err| Failure::failed(err.to_string()))?;
        Ok(Client { http, base: base.trim_end_matches('/').to_string(), credential })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// A request to `path` (starting with `/`) with the credentials attached.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.credential {
            Credential::ApiKey(key) => request.header("x-api-key", key),
            Credential::Token(token) => request.bearer_auth(token),
            Credential::None => request,
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Outcome<T> {
        self.send(self.request(Method::GET, path)).await
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Outcome<T> {
        self.send(self.request(Method::POST, path).json(body)).await
    }

    pub async fn patch<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Outcome<T> {
        self.send(self.request(Method::PATCH, path).json(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Outcome<T> {
        self.send(self.request(Method::DELETE, path)).await
    }

    /// Every item of a paged list, following `next_cursor`, up to `limit` items.
    pub async fn list_all<T: DeserializeOwned>(
        &self,
        path: &str,
        limit: Option<usize>,
    ) -> Outcome<Vec<T>> {
        #[derive(serde::Deserialize)]
        struct Page<T> {
            #[serde(default = "Vec::new")]
            items: Vec<T>,
            next_cursor: Option<String>,
        }
        let mut items = Vec::new();
        let separator = if path.contains('?') { '&' } else { '?' };
        let mut cursor: Option<String> = None;
        loop {
            let page_size = limit.map_or(100, |limit| (limit - items.len()).clamp(1, 100));
            let mut url = format!("{path}{separator}limit={page_size}");
            if let Some(cursor) = &cursor {
                url.push_str(&format!("&cursor={cursor}"));
            }
            let page: Page<T> = self.get(&url).await?;
            items.extend(page.items);
            if limit.is_some_and(|limit| items.len() >= limit) {
                items.truncate(limit.unwrap_or(usize::MAX));
                return Ok(items);
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(items),
            }
        }
    }

    /// Sends a request and reads its JSON answer as `T` (an empty answer as `null`); an error
    /// answer becomes a `Failure` with the API's `detail` and the exit code its status calls
    /// for.
    pub async fn send<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Outcome<T> {
        let response = request.send().await.map_err(|err| self.unreachable(&err))?;
        let status = response.status();
        let text = response.text().await.map_err(|err| self.unreachable(&err))?;
        if status.is_success() {
            let text = if text.is_empty() { "null" } else { text.as_str() };
            let value: Value = serde_json::from_str(text).map_err(|err| {
                Failure::failed(format!("{} answered something that is not JSON: {err}", self.base))
            })?;
            return serde_path_to_error::deserialize(value).map_err(|err| {
                Failure::failed(format!(
                    "{} answered what this client cannot read, at {}: {}; is the server another \
                     version of corral?",
                    self.base,
                    err.path(),
                    err.inner()
                ))
            });
        }
        Err(problem(status, &text))
    }

    fn unreachable(&self, err: &reqwest::Error) -> Failure {
        Failure::failed(format!(
            "cannot reach the corral server at {} ({}); check --server or CORRAL_SERVER",
            self.base,
            crate::error_chain(err)
        ))
    }
}

/// The failure for an error answer: its `detail` and every field error, with the exit code
/// for its status.
pub fn problem(status: StatusCode, text: &str) -> Failure {
    let body: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let mut message = body["detail"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("the server answered {status}: {}", text.trim()));
    for error in body["errors"].as_array().into_iter().flatten() {
        let field = error["field"].as_str().unwrap_or_default();
        let detail = error["message"].as_str().unwrap_or_default();
        // A one-instance conflict says the same in its detail and its error: once is enough.
        if detail != message {
            message.push_str(&format!("\n  {field}: {detail}"));
        }
    }
    let code = match status {
        StatusCode::UNAUTHORIZED => {
            // The API's advice is for HTTP clients; a CLI user logs in.
            if message.starts_with("credentials required") {
                message = "no credentials were sent".to_string();
            }
            message.push_str("\nrun `corral login` (or set CORRAL_API_KEY)");
            ExitCode::Auth
        }
        StatusCode::FORBIDDEN => ExitCode::Auth,
        StatusCode::NOT_FOUND => ExitCode::NotFound,
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => ExitCode::Usage,
        _ => ExitCode::Failed,
    };
    Failure::new(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_map_to_exit_codes_and_keep_every_field_error() {
        let body = r#"{"detail": "the request is invalid", "errors": [
            {"field": "instance_type", "message": "m5.large is not allowed"},
            {"field": "storage_gb", "message": "at most 30"}]}"#;
        let failure = problem(StatusCode::UNPROCESSABLE_ENTITY, body);
        assert_eq!(failure.code, ExitCode::Usage);
        assert_eq!(
            failure.message,
            "the request is invalid\n  instance_type: m5.large is not allowed\n  storage_gb: at most 30"
        );
        assert_eq!(problem(StatusCode::NOT_FOUND, "{}").code, ExitCode::NotFound);
        assert_eq!(problem(StatusCode::FORBIDDEN, "{}").code, ExitCode::Auth);
        let unauthorized = problem(StatusCode::UNAUTHORIZED, r#"{"detail": "bad key"}"#);
        assert_eq!(unauthorized.message, "bad key\nrun `corral login` (or set CORRAL_API_KEY)");
        let anonymous = r#"{"detail": "credentials required: send an X-API-KEY header"}"#;
        let anonymous = problem(StatusCode::UNAUTHORIZED, anonymous);
        assert!(anonymous.message.starts_with("no credentials were sent\nrun `corral login`"));
        assert!(!anonymous.message.contains("X-API-KEY"), "{}", anonymous.message);
        // A conflict of one instance says it once.
        let busy = r#"{"detail": "busy with job j1", "errors": [
            {"field": "i1", "message": "busy with job j1"}]}"#;
        assert_eq!(problem(StatusCode::CONFLICT, busy).message, "busy with job j1");
        let odd = problem(StatusCode::BAD_GATEWAY, "upstream down");
        assert_eq!(
            (odd.code, odd.message.as_str()),
            (ExitCode::Failed, "the server answered 502 Bad Gateway: upstream down")
        );
    }
}
