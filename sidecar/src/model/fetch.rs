//! Model cards and weights from a URI: a local path, `file://`,
//! `http(s)://`, or object storage (`s3://`, `gs://`, `az://`, `abfs://`)
//! through `object_store`, which reads credentials and endpoints from the
//! usual environment variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`). A URI names
//! a model directory (holding `card.json`) or a card file (`*.json`); the
//! weights are the card's `weights.uri`, relative to the card unless it is a
//! URI itself, and are checked against the card's sha256 like local ones.

use std::path::{Path as FsPath, PathBuf};

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use url::Url;

use super::card::{CARD_FILE, ModelCard};
use super::store::{self, ModelError};
use super::{Model, Placement};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("'{uri}' is not a model URI: {reason}")]
    BadUri { uri: String, reason: String },
    #[error("cannot fetch {uri}: {source}")]
    Store {
        uri: String,
        #[source]
        source: object_store::Error,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Where a card lives.
#[derive(Debug)]
enum Location {
    Local(PathBuf),
    Remote(Url),
}

fn locate(uri: &str) -> Result<Location, FetchError> {
    if let Some(path) = uri.strip_prefix("file://") {
        return Ok(Location::Local(PathBuf::from(path)));
    }
    if !uri.contains("://") {
        return Ok(Location::Local(PathBuf::from(uri)));
    }
    let bad = |reason: String| FetchError::BadUri {
        uri: uri.to_owned(),
        reason,
    };
    let mut url = Url::parse(uri).map_err(|e| bad(e.to_string()))?;
    match url.scheme() {
        "http" | "https" | "s3" | "s3a" | "gs" | "az" | "adl" | "azure" | "abfs" | "abfss" => {}
        other => {
            return Err(bad(format!(
                "scheme {other}:// is not supported (use a path, file://, http(s)://, s3://, gs:// or az://)"
            )));
        }
    }
    if !url.path().ends_with(".json") {
        let dir = format!("{}/", url.path().trim_end_matches('/'));
        url.set_path(&dir);
        url = url.join(CARD_FILE).map_err(|e| bad(e.to_string()))?;
    }
    Ok(Location::Remote(url))
}

async fn get(url: &Url) -> Result<bytes::Bytes, FetchError> {
    crate::tls::init();
    let store_err = |source| FetchError::Store {
        uri: url.to_string(),
        source,
    };
    // An http:// URI asks for plain HTTP; object storage allows it only
    // when told (e.g. AWS_ALLOW_HTTP for a local S3 endpoint).
    let mut options: Vec<(String, String)> = std::env::vars().collect();
    if url.scheme() == "http" {
        options.push(("allow_http".into(), "true".into()));
    }
    let (store, path): (Box<dyn ObjectStore>, Path) =
        object_store::parse_url_opts(url, options).map_err(store_err)?;
    let result = store.get(&path).await.map_err(store_err)?;
    result.bytes().await.map_err(store_err)
}

/// The card a URI names, without its weights.
pub async fn card(uri: &str) -> Result<ModelCard, FetchError> {
    match locate(uri)? {
        Location::Local(path) => Ok(store::read_card(&path)?.0),
        Location::Remote(url) => {
            let text = get(&url).await?;
            Ok(store::parse_card(&text, FsPath::new(url.as_str()))?)
        }
    }
}

/// The bytes of the weights of `card`, the card that `uri` names, checked
/// against its sha256; and where they came from.
pub async fn weights(uri: &str, card: &ModelCard) -> Result<(bytes::Bytes, String), FetchError> {
    match locate(uri)? {
        Location::Local(path) => {
            let card_path = if path.is_dir() {
                path.join(CARD_FILE)
            } else {
                path
            };
            let file = card_path
                .parent()
                .unwrap_or(FsPath::new("."))
                .join(&card.weights.uri);
            let bytes = tokio::fs::read(&file)
                .await
                .map_err(|source| ModelError::Read {
                    path: file.clone(),
                    source,
                })?;
            store::check_sha256(card, &bytes, &file)?;
            Ok((bytes.into(), file.display().to_string()))
        }
        Location::Remote(url) => {
            let (bytes, weights) = get_weights(&url, card).await?;
            store::check_sha256(card, &bytes, FsPath::new(weights.as_str()))?;
            Ok((bytes, weights.to_string()))
        }
    }
}

/// The weights `card` names, relative to the card's own URL (not checked).
async fn get_weights(url: &Url, card: &ModelCard) -> Result<(bytes::Bytes, Url), FetchError> {
    let weights = url
        .join(&card.weights.uri)
        .map_err(|e| FetchError::BadUri {
            uri: card.weights.uri.clone(),
            reason: format!("weights URI relative to {url}: {e}"),
        })?;
    tracing::info!(%weights, "fetching weights");
    let bytes = get(&weights).await?;
    Ok((bytes, weights))
}

/// The model a URI names, weights checked against the card's sha256, on
/// `placement`'s device in its precision.
pub async fn load(uri: &str, placement: &Placement) -> Result<Model, FetchError> {
    let url = match locate(uri)? {
        Location::Local(path) => {
            let placement = placement.clone();
            return tokio::task::spawn_blocking(move || store::load(&path, &placement))
                .await
                .map_err(|e| FetchError::BadUri {
                    uri: uri.to_owned(),
                    reason: format!("loading panicked: {e}"),
                })?
                .map_err(FetchError::from);
        }
        Location::Remote(url) => url,
    };
    let text = get(&url).await?;
    let card = store::parse_card(&text, FsPath::new(url.as_str()))?;
    // load_from_bytes checks the sha256
    let (bytes, weights) = get_weights(&url, &card).await?;
    Ok(store::load_from_bytes(
        card,
        &bytes,
        FsPath::new(weights.as_str()),
        placement,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_and_cards_are_located() {
        assert!(
            matches!(locate("models/x").unwrap(), Location::Local(p) if p.as_path() == std::path::Path::new("models/x"))
        );
        assert!(
            matches!(locate("file:///m/x").unwrap(), Location::Local(p) if p.as_path() == std::path::Path::new("/m/x"))
        );
        let remote = |u: &str| match locate(u).unwrap() {
            Location::Remote(url) => url.to_string(),
            Location::Local(p) => panic!("{u} is local: {p:?}"),
        };
        assert_eq!(
            remote("https://h/models/mlp"),
            "https://h/models/mlp/card.json"
        );
        assert_eq!(
            remote("https://h/models/mlp/"),
            "https://h/models/mlp/card.json"
        );
        assert_eq!(remote("s3://bucket/m/card.json"), "s3://bucket/m/card.json");
        assert_eq!(remote("gs://b/m"), "gs://b/m/card.json");
        let err = locate("ftp://h/m").unwrap_err().to_string();
        assert!(err.contains("ftp:// is not supported"), "{err}");
    }
}
