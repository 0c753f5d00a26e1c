//! Unfinished uploads that a killed attempt leaves behind, found so that the next run can remove
//! them.
//!
//! A task killed while it streams a file leaves, on S3, a multipart upload that nobody completes
//! or aborts: its parts are kept (and billed) until a lifecycle rule, if the bucket has one,
//! removes them, and no object listing shows them. On a local folder, object_store's
//! `LocalFileSystem` stages an upload to `name` in the file `name#<n>` beside it, which its
//! listings hide and only the upload's own `complete` or `abort` removes.
//!
//! object_store 0.13 aborts an upload whose id it is given, but cannot list them. So the listing
//! (S3's ListMultipartUploads) is a request of our own, signed with the bucket store's
//! credentials and sent to the endpoint object_store would use, with the same client settings;
//! the aborts go through the store itself.

use std::path::{Path as LocalPath, PathBuf};

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, AwsAuthorizer};
use object_store::client::{HttpClient, HttpConnector, HttpRequest, HttpRequestBody, ReqwestConnector};
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{ClientConfigKey, ClientOptions};
use quick_xml::events::{BytesRef, Event};
use url::Url;

use crate::location::{Location, StoreError};

/// Every HTTP client option object_store knows, copied from a bucket's builder so that our own
/// requests honour the same `allow_http`, proxy, timeouts and certificate settings.
const CLIENT_KEYS: [ClientConfigKey; 18] = [
    ClientConfigKey::AllowHttp,
    ClientConfigKey::AllowInvalidCertificates,
    ClientConfigKey::ConnectTimeout,
    ClientConfigKey::DefaultContentType,
    ClientConfigKey::Http1Only,
    ClientConfigKey::Http2KeepAliveInterval,
    ClientConfigKey::Http2KeepAliveTimeout,
    ClientConfigKey::Http2KeepAliveWhileIdle,
    ClientConfigKey::Http2MaxFrameSize,
    ClientConfigKey::Http2Only,
    ClientConfigKey::PoolIdleTimeout,
    ClientConfigKey::PoolMaxIdlePerHost,
    ClientConfigKey::ProxyUrl,
    ClientConfigKey::ProxyCaCertificate,
    ClientConfigKey::ProxyExcludes,
    ClientConfigKey::RandomizeAddresses,
    ClientConfigKey::Timeout,
    ClientConfigKey::UserAgent,
];

/// What a ListMultipartUploads request to one bucket needs, read from the builder of the bucket's
/// store: object_store keeps its resolved configuration private.
#[derive(Debug, Clone)]
pub(crate) struct S3UploadsEndpoint {
    bucket: String,
    /// The URL object_store puts keys under: `<endpoint>/<bucket>` for path-style requests,
    /// `<endpoint>` for virtual-hosted ones (the endpoint then names the bucket), AWS's otherwise.
    bucket_url: String,
    region: String,
    client: ClientOptions,
    request_payer: bool,
    skip_signature: bool,
    /// S3 Express One Zone buckets sign with session credentials object_store does not expose.
    s3_express: bool,
}

impl S3UploadsEndpoint {
    /// Reads the settings as object_store's `AmazonS3Builder::build` resolves them. Call it on a
    /// builder that built: its flags then parse.
    pub(crate) fn from_builder(builder: &AmazonS3Builder) -> Result<Self, String> {
        let value = |key: AmazonS3ConfigKey| builder.get_config_value(&key);
        let flag = |key: AmazonS3ConfigKey| value(key).map_or(Ok(false), |v| parse_flag(&v));
        let bucket = value(AmazonS3ConfigKey::Bucket).ok_or("no bucket name")?;
        let region = value(AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".to_owned());
        // As object_store: the S3-specific endpoint wins over the generic one.
        let endpoint = value(AmazonS3ConfigKey::S3Endpoint).or_else(|| value(AmazonS3ConfigKey::Endpoint));
        let bucket_url = match (endpoint, flag(AmazonS3ConfigKey::VirtualHostedStyleRequest)?) {
            (Some(endpoint), true) => endpoint,
            (Some(endpoint), false) => format!("{}/{bucket}", endpoint.trim_end_matches('/')),
            (None, true) => format!("https://{bucket}.s3.{region}.amazonaws.com"),
            (None, false) => format!("https://s3.{region}.amazonaws.com/{bucket}"),
        };
        let client = CLIENT_KEYS.iter().fold(ClientOptions::new(), |options, key| {
            match builder.get_config_value(&AmazonS3ConfigKey::Client(*key)) {
                Some(value) => options.with_config(*key, value),
                None => options,
            }
        });
        Ok(Self {
            bucket,
            bucket_url,
            region,
            client,
            request_payer: flag(AmazonS3ConfigKey::RequestPayer)?,
            skip_signature: flag(AmazonS3ConfigKey::SkipSignature)?,
            s3_express: flag(AmazonS3ConfigKey::S3Express)?,
        })
    }

    /// The `s3://` URL of `key`, for messages and results.
    fn object_url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// Every unfinished upload whose key starts with `prefix`, all pages of the listing.
    async fn list(&self, s3: &AmazonS3, prefix: &str) -> Result<Vec<Upload>, StoreError> {
        let what = self.object_url(prefix);
        if self.s3_express {
            let reason = "listing the uploads of an S3 Express One Zone bucket is not supported".to_owned();
            return Err(StoreError::InvalidLocation { location: what, reason });
        }
        let client = ReqwestConnector::default().connect(&self.client).map_err(|error| StoreError::Store {
            action: "connect to list the unfinished uploads under",
            url: what.clone(),
            error,
        })?;
        let mut uploads = Vec::new();
        let mut marker: Option<Marker> = None;
        loop {
            let page = self.list_page(&client, s3, prefix, marker.as_ref(), &what).await?;
            uploads.extend(page.uploads);
            match page.next {
                // A server that hands back the marker it was given would have us loop forever.
                Some(next) if marker.as_ref() == Some(&next) => {
                    return Err(StoreError::Request {
                        action: "list the unfinished uploads under",
                        url: what,
                        status: Some(200),
                        reason: format!("the listing does not advance past {:?}", next.key),
                    });
                }
                Some(next) => marker = Some(next),
                None => return Ok(uploads),
            }
        }
    }

    async fn list_page(
        &self,
        client: &HttpClient,
        s3: &AmazonS3,
        prefix: &str,
        marker: Option<&Marker>,
        what: &str,
    ) -> Result<Page, StoreError> {
        let failure = |status: Option<u16>, reason: String| StoreError::Request {
            action: "list the unfinished uploads under",
            url: what.to_owned(),
            status,
            reason,
        };
        let invalid = |reason: String| StoreError::InvalidLocation { location: what.to_owned(), reason };
        let mut url = Url::parse(&format!("{}/", self.bucket_url.trim_end_matches('/')))
            .map_err(|e| invalid(format!("invalid S3 endpoint {}: {e}", self.bucket_url)))?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("uploads", "");
            if !prefix.is_empty() {
                query.append_pair("prefix", prefix);
            }
            if let Some(marker) = marker {
                query.append_pair("key-marker", &marker.key);
                if !marker.upload_id.is_empty() {
                    query.append_pair("upload-id-marker", &marker.upload_id);
                }
            }
        }
        let mut request = HttpRequest::new(HttpRequestBody::empty());
        *request.uri_mut() =
            http::Uri::try_from(url.as_str()).map_err(|e| invalid(format!("invalid request URL {url}: {e}")))?;
        if !self.skip_signature {
            let credential = s3.credentials().get_credential().await.map_err(|error| StoreError::Store {
                action: "get the credentials to list the unfinished uploads under",
                url: what.to_owned(),
                error,
            })?;
            AwsAuthorizer::new(&credential, "s3", &self.region)
                .with_request_payer(self.request_payer)
                .authorize(&mut request, None);
        }
        let response = client.execute(request).await.map_err(|e| failure(None, e.to_string()))?;
        let status = response.status();
        let body = response.into_body().bytes().await.map_err(|e| failure(None, e.to_string()))?;
        let body = String::from_utf8_lossy(&body);
        if !status.is_success() {
            let code = status.as_u16();
            let said = match parse_error(&body) {
                Some(error) => format!(": {error}"),
                None => String::new(),
            };
            let reason = match code {
                403 => format!("refused (403 Forbidden{said})"),
                501 => format!("the server does not implement ListMultipartUploads (501 Not Implemented{said})"),
                _ => format!("the server answered {status}{said}"),
            };
            return Err(failure(Some(code), reason));
        }
        parse_page(&body).map_err(|e| failure(Some(status.as_u16()), format!("unreadable answer: {e}")))
    }
}

/// object_store's reading of a boolean setting.
fn parse_flag(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "on" | "yes" | "y" => Ok(true),
        "0" | "false" | "off" | "no" | "n" => Ok(false),
        _ => Err(format!("{value:?} is not a boolean")),
    }
}

/// One unfinished multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Upload {
    key: String,
    id: String,
}

/// Where the next page of a truncated listing starts.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Marker {
    key: String,
    upload_id: String,
}

/// One answer to ListMultipartUploads.
#[derive(Debug, PartialEq, Eq)]
struct Page {
    uploads: Vec<Upload>,
    /// Set when the listing is truncated.
    next: Option<Marker>,
}

/// Reads a `ListMultipartUploadsResult`. Text is taken exactly, entities resolved and nothing
/// trimmed, since a key may begin or end with spaces.
fn parse_page(xml: &str) -> Result<Page, String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut open: Vec<String> = Vec::new();
    let mut text = String::new();
    let (mut key, mut id) = (None, None);
    let mut uploads = Vec::new();
    let (mut truncated, mut next_key, mut next_upload_id) = (false, None, None);
    loop {
        let event = reader.read_event().map_err(|e| format!("at byte {}: {e}", reader.error_position()))?;
        let closed = match event {
            Event::Start(start) => {
                open.push(element_name(start.local_name().as_ref())?);
                text.clear();
                continue;
            }
            Event::Empty(start) => {
                open.push(element_name(start.local_name().as_ref())?);
                text.clear();
                open.join("/")
            }
            Event::End(_) => open.join("/"),
            Event::Text(content) => {
                text.push_str(&content.decode().map_err(|e| e.to_string())?);
                continue;
            }
            Event::CData(content) => {
                text.push_str(&content.decode().map_err(|e| e.to_string())?);
                continue;
            }
            Event::GeneralRef(reference) => {
                push_reference(&mut text, &reference)?;
                continue;
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => continue,
        };
        open.pop();
        match closed.as_str() {
            "ListMultipartUploadsResult/Upload/Key" => key = Some(std::mem::take(&mut text)),
            "ListMultipartUploadsResult/Upload/UploadId" => id = Some(std::mem::take(&mut text)),
            "ListMultipartUploadsResult/Upload" => match (key.take(), id.take()) {
                (Some(key), Some(id)) => uploads.push(Upload { key, id }),
                _ => return Err("an Upload without its Key or UploadId".to_owned()),
            },
            "ListMultipartUploadsResult/IsTruncated" => truncated = parse_flag(text.trim())?,
            "ListMultipartUploadsResult/NextKeyMarker" => next_key = Some(std::mem::take(&mut text)),
            "ListMultipartUploadsResult/NextUploadIdMarker" => next_upload_id = Some(std::mem::take(&mut text)),
            root if !root.contains('/') && root != "ListMultipartUploadsResult" => {
                return Err(format!("a {root} document, not a ListMultipartUploadsResult"));
            }
            _ => {}
        }
    }
    if !open.is_empty() {
        return Err(format!("the document ends inside {}", open.join("/")));
    }
    let next = match (truncated, next_key) {
        (false, _) => None,
        (true, Some(key)) if !key.is_empty() => Some(Marker { key, upload_id: next_upload_id.unwrap_or_default() }),
        (true, _) => return Err("a truncated listing without a NextKeyMarker".to_owned()),
    };
    Ok(Page { uploads, next })
}

/// `Code: Message` of an S3 error document, when the body is one.
fn parse_error(xml: &str) -> Option<String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut open: Vec<String> = Vec::new();
    let mut text = String::new();
    let (mut code, mut message) = (None, None);
    loop {
        match reader.read_event().ok()? {
            Event::Start(start) => {
                open.push(element_name(start.local_name().as_ref()).ok()?);
                text.clear();
            }
            Event::End(_) => {
                match open.join("/").as_str() {
                    "Error/Code" => code = Some(std::mem::take(&mut text)),
                    "Error/Message" => message = Some(std::mem::take(&mut text)),
                    _ => {}
                }
                open.pop();
            }
            Event::Text(content) => text.push_str(&content.decode().ok()?),
            Event::GeneralRef(reference) => push_reference(&mut text, &reference).ok()?,
            Event::Eof => break,
            _ => {}
        }
    }
    match (code, message) {
        (Some(code), Some(message)) => Some(format!("{code}: {message}")),
        (Some(code), None) => Some(code),
        (None, Some(message)) => Some(message),
        (None, None) => None,
    }
}

fn element_name(name: &[u8]) -> Result<String, String> {
    std::str::from_utf8(name).map(str::to_owned).map_err(|e| format!("an element name that is not UTF-8: {e}"))
}

/// Appends what `&...;` stands for: a character reference or one of XML's five entities.
fn push_reference(text: &mut String, reference: &BytesRef<'_>) -> Result<(), String> {
    if let Some(c) = reference.resolve_char_ref().map_err(|e| e.to_string())? {
        text.push(c);
        return Ok(());
    }
    let name = reference.decode().map_err(|e| e.to_string())?;
    let resolved = quick_xml::escape::resolve_xml_entity(&name).ok_or(format!("unknown entity &{name};"))?;
    text.push_str(resolved);
    Ok(())
}

/// The unfinished S3 uploads under `folder` (recursively), each with the name of its object
/// relative to the folder. A key object_store cannot name (`a//b`, `./x`) was not written
/// through it, so not by fruits: it is left out.
async fn s3_uploads_under(
    endpoint: &S3UploadsEndpoint,
    s3: &AmazonS3,
    folder: &Location,
) -> Result<Vec<(String, Path, Upload)>, StoreError> {
    let prefix = folder.listing_url().prefix();
    // `out/features/`, not `out/features`, which would also match `out/features-old/...`.
    let prefix = if prefix.as_ref().is_empty() { String::new() } else { format!("{prefix}/") };
    let uploads = endpoint.list(s3, &prefix).await?;
    Ok(uploads
        .into_iter()
        .filter_map(|upload| {
            let path = Path::parse(&upload.key).ok().filter(|path| path.as_ref() == upload.key)?;
            let name = folder.relative_name(&path).filter(|name| !name.is_empty())?;
            Some((name, path, upload))
        })
        .collect())
}

/// The names of the objects with an unfinished upload under the S3 `folder`.
pub(crate) async fn s3_incomplete(
    endpoint: &S3UploadsEndpoint,
    s3: &AmazonS3,
    folder: &Location,
) -> Result<Vec<String>, StoreError> {
    Ok(s3_uploads_under(endpoint, s3, folder).await?.into_iter().map(|(name, _, _)| name).collect())
}

/// Aborts the unfinished uploads under the S3 `folder` whose name is `owned`; returns the URLs of
/// their objects, one per upload aborted. One that is gone by the time it is aborted (completed
/// or aborted by someone else) is not counted.
pub(crate) async fn s3_abort(
    endpoint: &S3UploadsEndpoint,
    s3: &AmazonS3,
    folder: &Location,
    owned: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Vec<String>, StoreError> {
    let mut aborted = Vec::new();
    for (name, path, upload) in s3_uploads_under(endpoint, s3, folder).await? {
        if !owned(&name) {
            continue;
        }
        let url = endpoint.object_url(&upload.key);
        match s3.abort_multipart(&path, &upload.id).await {
            Ok(()) => aborted.push(url),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(error) => return Err(StoreError::Store { action: "abort the upload of", url, error }),
        }
    }
    Ok(aborted)
}

/// A file in which `LocalFileSystem` staged an upload.
#[derive(Debug)]
struct Staged {
    /// The object's name relative to the folder, `/`-separated.
    name: String,
    file: PathBuf,
}

/// The object `file_name` stages an upload to: `LocalFileSystem` writes an upload to `name` in
/// `name#<n>`, `n` a decimal counter, and refuses to write objects whose name ends in `#<digits>`
/// (first `#` on), so such a name is not an object's.
fn staged_object(file_name: &str) -> Option<&str> {
    let (name, counter) = file_name.rsplit_once('#')?;
    let is_counter = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let object_name_allowed = name.split_once('#').is_none_or(|(_, rest)| !is_counter(rest));
    (is_counter(counter) && !name.is_empty() && object_name_allowed).then_some(name)
}

/// Every staging file under `dir`, recursively. Symbolic links are not followed: what they point
/// to is not inside the folder. Names that are not UTF-8 are not object_store's.
fn find_staged(dir: &LocalPath, relative: &str, found: &mut Vec<Staged>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // The folder, or a sub-folder since removed by another cleaner: nothing staged there.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Some(file_name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let kind = entry.file_type()?;
        if kind.is_dir() {
            find_staged(&entry.path(), &format!("{relative}{file_name}/"), found)?;
        } else if kind.is_file()
            && let Some(name) = staged_object(&file_name)
        {
            found.push(Staged { name: format!("{relative}{name}"), file: entry.path() });
        }
    }
    Ok(())
}

/// The local folder of `folder`, a `file://` URL.
pub(crate) fn local_dir(folder: &Location) -> Result<PathBuf, StoreError> {
    let invalid =
        |reason: &str| StoreError::InvalidLocation { location: folder.url().to_owned(), reason: reason.to_owned() };
    let url = Url::parse(folder.url()).map_err(|e| invalid(&e.to_string()))?;
    url.to_file_path().map_err(|()| invalid("not a local path"))
}

async fn staged_under(folder: &Location) -> Result<Vec<Staged>, StoreError> {
    let dir = local_dir(folder)?;
    let walk_error =
        |error| StoreError::Local { action: "look for staged uploads in", path: dir.display().to_string(), error };
    let walked = dir.clone();
    let found = tokio::task::spawn_blocking(move || {
        let mut found = Vec::new();
        find_staged(&walked, "", &mut found).map(|()| found)
    })
    .await
    .map_err(|e| walk_error(std::io::Error::other(e)))?;
    found.map_err(walk_error)
}

/// The names of the objects with a staged upload under the local `folder`.
pub(crate) async fn local_incomplete(folder: &Location) -> Result<Vec<String>, StoreError> {
    Ok(staged_under(folder).await?.into_iter().map(|staged| staged.name).collect())
}

/// Removes the staging files under the local `folder` of the objects whose name is `owned`;
/// returns the URLs of those objects, one per file removed.
pub(crate) async fn local_abort(
    folder: &Location,
    owned: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Vec<String>, StoreError> {
    let mut removed = Vec::new();
    for staged in staged_under(folder).await? {
        if !owned(&staged.name) {
            continue;
        }
        match tokio::fs::remove_file(&staged.file).await {
            Ok(()) => removed.push(folder.child_url(&staged.name)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(StoreError::Local { action: "remove", path: staged.file.display().to_string(), error });
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use datafusion::execution::runtime_env::RuntimeEnv;
    use object_store::local::LocalFileSystem;
    use object_store::signer::Signer;
    use object_store::{MultipartUpload, ObjectStoreExt, PutPayload};

    use super::*;

    const PAGE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>photos</Bucket>
  <KeyMarker></KeyMarker>
  <UploadIdMarker/>
  <NextKeyMarker>out/features/b &amp; c.parquet</NextKeyMarker>
  <NextUploadIdMarker>id-2</NextUploadIdMarker>
  <Prefix>out/features/</Prefix>
  <MaxUploads>2</MaxUploads>
  <IsTruncated>true</IsTruncated>
  <Upload>
    <Key>out/features/&lt;a&gt; &#x41;&#233; 50%25.parquet</Key>
    <UploadId>id-1</UploadId>
    <Initiator><ID>x</ID><DisplayName>x</DisplayName></Initiator>
    <Initiated>2026-12-02T05:00:00.000Z</Initiated>
  </Upload>
  <!-- a comment between uploads -->
  <Upload><Key> out/features/b &amp; c.parquet </Key><UploadId>id-2</UploadId></Upload>
</ListMultipartUploadsResult>"#;

    #[test]
    fn a_listing_page_gives_unescaped_keys_and_the_next_markers() {
        let page = parse_page(PAGE).unwrap();
        let upload = |key: &str, id: &str| Upload { key: key.to_owned(), id: id.to_owned() };
        assert_eq!(
            page.uploads,
            [upload("out/features/<a> Aé 50%25.parquet", "id-1"), upload(" out/features/b & c.parquet ", "id-2")]
        );
        let next = Marker { key: "out/features/b & c.parquet".to_owned(), upload_id: "id-2".to_owned() };
        assert_eq!(page.next, Some(next));
    }

    #[test]
    fn the_last_page_has_no_next_marker_and_broken_answers_are_errors() {
        let last = "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated><NextKeyMarker/>\
                    <Upload><Key>k</Key><UploadId>i</UploadId></Upload></ListMultipartUploadsResult>";
        let page = parse_page(last).unwrap();
        assert_eq!(page.next, None);
        assert_eq!(page.uploads, [Upload { key: "k".into(), id: "i".into() }]);
        let empty =
            parse_page("<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>");
        assert_eq!(empty.unwrap(), Page { uploads: Vec::new(), next: None });

        let endless = "<ListMultipartUploadsResult><IsTruncated>true</IsTruncated></ListMultipartUploadsResult>";
        assert!(parse_page(endless).unwrap_err().contains("NextKeyMarker"));
        let no_id = "<ListMultipartUploadsResult><Upload><Key>k</Key></Upload></ListMultipartUploadsResult>";
        assert!(parse_page(no_id).unwrap_err().contains("UploadId"));
        let error = "<Error><Code>AccessDenied</Code><Message>Forbidden: no &quot;list&quot;</Message></Error>";
        assert!(parse_page(error).unwrap_err().contains("a Error document"));
        assert_eq!(parse_error(error).as_deref(), Some(r#"AccessDenied: Forbidden: no "list""#));
        assert!(parse_page("<ListMultipartUploadsResult><Upload>").is_err());
        assert!(parse_page("<ListMultipartUploadsResult>&bogus;</ListMultipartUploadsResult>").is_err());
        assert_eq!(parse_error("not XML at all"), None);
    }

    /// The bucket URL we compute is the one object_store signs its own requests for.
    #[tokio::test]
    async fn the_bucket_url_is_object_stores() {
        let base = || {
            AmazonS3Builder::new()
                .with_bucket_name("photos")
                .with_region("eu-west-3")
                .with_access_key_id("key")
                .with_secret_access_key("secret")
        };
        let builders = [
            base(),
            base().with_virtual_hosted_style_request(true),
            base().with_endpoint("http://127.0.0.1:3900/").with_allow_http(true),
            base().with_endpoint("https://photos.objects.example").with_virtual_hosted_style_request(true),
        ];
        for builder in builders {
            let endpoint = S3UploadsEndpoint::from_builder(&builder).unwrap();
            let store = builder.build().unwrap();
            let signed = store.signed_url(http::Method::GET, &Path::from("k"), Duration::from_secs(60)).await.unwrap();
            let object = format!("{}/k", endpoint.bucket_url.trim_end_matches('/'));
            assert_eq!(&signed.as_str()[..object.len()], object, "{endpoint:?}");
            assert_eq!(endpoint.region, "eu-west-3");
        }
        let http = base().with_endpoint("http://127.0.0.1:3900").with_allow_http(true);
        let endpoint = S3UploadsEndpoint::from_builder(&http).unwrap();
        assert_eq!(endpoint.client.get_config_value(&ClientConfigKey::AllowHttp).as_deref(), Some("true"));
        assert!(!endpoint.s3_express && !endpoint.skip_signature && !endpoint.request_payer);
    }

    #[test]
    fn staging_file_names() {
        assert_eq!(staged_object("part-a.parquet#3"), Some("part-a.parquet"));
        assert_eq!(staged_object("a#b#12"), Some("a#b"));
        assert_eq!(staged_object("part-a.parquet"), None);
        assert_eq!(staged_object("notes#draft"), None);
        assert_eq!(staged_object("x#"), None);
        assert_eq!(staged_object("#1"), None);
        // `a#1` cannot be an object of the local store, so `a#1#2` stages nothing.
        assert_eq!(staged_object("a#1#2"), None);
    }

    #[tokio::test]
    async fn local_staging_files_of_owned_objects_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("out");
        std::fs::create_dir_all(root.join("features/sub")).unwrap();
        for file in ["features/part-a.parquet#3", "features/part-a.parquet", "notes#1", "features/notes#draft"] {
            std::fs::write(root.join(file), b"x").unwrap();
        }
        // A real upload, staged by object_store and abandoned as a killed process would.
        let local = LocalFileSystem::new_with_prefix(&root).unwrap();
        let mut upload = local.put_multipart(&Path::from("features/sub/part-b.parquet")).await.unwrap();
        upload.put_part(PutPayload::from_static(b"rows")).await.unwrap();
        std::mem::forget(upload);

        let stores = crate::ObjectStores::new(crate::S3Options::default());
        let runtime: Arc<RuntimeEnv> = stores.runtime_env().unwrap();
        let folder = Location::create(&root.display().to_string(), &runtime).unwrap();
        let mut pending = stores.incomplete_uploads(&folder).await.unwrap();
        pending.sort();
        assert_eq!(pending, ["features/part-a.parquet", "features/sub/part-b.parquet", "notes"]);

        let fruits = |name: &str| {
            let file = name.rsplit('/').next().unwrap_or(name);
            file.starts_with("part-") && file.ends_with(".parquet")
        };
        let cleanup = stores.abort_incomplete_uploads(&folder, fruits);
        // The clean-up runs in tasks that may move between threads.
        fn assert_send<T: Send>(_: &T) {}
        assert_send(&cleanup);
        let mut removed = cleanup.await.unwrap();
        removed.sort();
        assert_eq!(
            removed,
            [folder.child_url("features/part-a.parquet"), folder.child_url("features/sub/part-b.parquet")]
        );
        assert!(!root.join("features/part-a.parquet#3").exists());
        assert!(!root.join("features/sub/part-b.parquet#1").exists());
        for kept in ["features/part-a.parquet", "notes#1", "features/notes#draft"] {
            assert!(root.join(kept).exists(), "{kept} was removed");
        }
        assert_eq!(stores.incomplete_uploads(&folder).await.unwrap(), ["notes"]);
        // Nothing left to do the second time, and a folder that does not exist has nothing.
        assert!(stores.abort_incomplete_uploads(&folder, fruits).await.unwrap().is_empty());
        let absent = Location::parse(&root.join("absent").display().to_string(), &runtime).unwrap();
        assert!(stores.abort_incomplete_uploads(&absent, |_| true).await.unwrap().is_empty());
    }
}
