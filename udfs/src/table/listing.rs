//! Finding the image files under a location.
//!
//! On a local disk the folder is walked here rather than through object_store's listing,
//! which ends at the first entry it cannot read: one unreadable folder, a symlink loop or a
//! name that is not UTF-8 would fail the whole job. Here each such entry is kept as a
//! [`Skipped`] entry, with its reason, and the walk goes on.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use datafusion::execution::object_store::ObjectStoreUrl;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectMeta;
use object_store::path::Path;

use crate::location::{Location, Naming, StoreError};

/// File name extensions read as images, compared case-insensitively.
const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// What [`list_images`] found: the image files, sorted by path, and the entries it could not
/// look into.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub images: Vec<ImageFile>,
    pub skipped: Vec<Skipped>,
}

/// One image file found by [`list_images`], as the store listed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    pub meta: ObjectMeta,
}

/// An entry of the input that could not be listed or read (an unreadable folder, a symlink
/// loop, a name that is not UTF-8): it may hold images, so it is reported, not ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The entry as a path of the store (lossy for a name that is not UTF-8).
    pub location: Path,
    pub reason: String,
}

impl Skipped {
    /// The entry as a file: its path, no size and no time. Its scan row and the version an
    /// incremental run compares both come from here.
    pub fn meta(&self) -> ObjectMeta {
        ImageFile::new(self.location.clone(), 0).meta
    }
}

/// One entry of a listing, as a scan reads it: each is one row of `images`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Image(ImageFile),
    Skipped(Skipped),
}

impl Entry {
    /// Its path in the store, as listed.
    pub fn location(&self) -> &Path {
        match self {
            Entry::Image(image) => image.location(),
            Entry::Skipped(skipped) => &skipped.location,
        }
    }

    /// The entry as a file (see [`Skipped::meta`]): an image's own, not a copy, since a listing
    /// of millions asks for each.
    pub fn meta(&self) -> Cow<'_, ObjectMeta> {
        match self {
            Entry::Image(image) => Cow::Borrowed(&image.meta),
            Entry::Skipped(skipped) => Cow::Owned(skipped.meta()),
        }
    }

    /// Why the scan does not read this entry, if so: its row carries the reason as
    /// `read_error`. `limit` is the largest file read (`--max-image-bytes`).
    pub(crate) fn read_error(&self, limit: u64) -> Option<String> {
        match self {
            Entry::Image(image) => (image.size() > limit).then(|| {
                format!("file of {} is above the limit of {} (--max-image-bytes)", bytes(image.size()), bytes(limit))
            }),
            Entry::Skipped(skipped) => Some(format!("skipped while listing: {}", skipped.reason)),
        }
    }
}

impl Listing {
    /// Every entry: the images, then the skipped entries.
    pub fn into_entries(self) -> impl Iterator<Item = Entry> {
        self.images.into_iter().map(Entry::Image).chain(self.skipped.into_iter().map(Entry::Skipped))
    }
}

/// `123 B`, `4.5 MiB`, `2.0 GiB`: sizes in messages.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

impl ImageFile {
    pub fn new(location: Path, size: u64) -> Self {
        Self {
            meta: ObjectMeta { location, last_modified: DateTime::<Utc>::UNIX_EPOCH, size, e_tag: None, version: None },
        }
    }

    pub fn location(&self) -> &Path {
        &self.meta.location
    }

    pub fn size(&self) -> u64 {
        self.meta.size
    }
}

/// True for a path whose file name has an image extension and in which no file or folder
/// name is hidden (starts with `.`, like `.DS_Store` or `.git/`). `relative` is the path below
/// the listed location, so a hidden folder *above* it does not hide everything.
fn is_image_path(relative: &str) -> bool {
    let mut parts = relative.split('/').filter(|p| !p.is_empty()).peekable();
    let mut name = None;
    while let Some(part) = parts.next() {
        if part.starts_with('.') {
            return false;
        }
        if parts.peek().is_none() {
            name = Some(part);
        }
    }
    let Some((_, extension)) = name.and_then(|n| n.rsplit_once('.')) else {
        return false;
    };
    IMAGE_EXTENSIONS.iter().any(|e| e.eq_ignore_ascii_case(extension))
}

/// Lists image files under `location`, recursively, sorted by path so that partitions and
/// outputs are the same from run to run. On a local disk, entries that cannot be read are
/// returned as [`Skipped`]; on an object store a failed listing is an error.
pub async fn list_images(location: &Location) -> Result<Listing, StoreError> {
    let mut listing = Listing::default();
    let mut entries = list_entries(location);
    while let Some(entry) = entries.try_next().await? {
        match entry {
            Entry::Image(image) => listing.images.push(image),
            Entry::Skipped(skipped) => listing.skipped.push(skipped),
        }
    }
    listing.images.sort_by(|a, b| a.meta.location.cmp(&b.meta.location));
    listing.skipped.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(listing)
}

/// Entries the local walk sends ahead of the reader.
const WALK_AHEAD: usize = 4096;

/// The entries under `location`, as [`list_images`] finds them, while it lists: whatever the
/// number of files, only a folder's names at a time are in memory. The order is the same from
/// run to run: the store's on an object store (by key), name by name within each folder on a
/// local disk.
pub fn list_entries(location: &Location) -> BoxStream<'static, Result<Entry, StoreError>> {
    if let Some(root) = local_folder(location) {
        let (sender, receiver) = tokio::sync::mpsc::channel(WALK_AHEAD);
        let folder = location.url().to_owned();
        let walk =
            tokio::task::spawn_blocking(move || walk_local(&root, |entry| sender.blocking_send(Ok(entry)).is_ok()));
        let entries = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|entry| (entry, receiver))
        });
        // A walk that stopped early (it panicked) ends the stream with an error, not silently.
        let end = futures::stream::once(async move {
            walk.await
                .map_err(|e| StoreError::InvalidLocation { location: folder, reason: format!("listing stopped: {e}") })
        })
        .filter_map(|ended| async move { ended.err().map(Err) });
        return entries.chain(end).boxed();
    }
    let prefix = location.listing_url().prefix().clone();
    location
        .list_stream()
        .try_filter_map(move |meta| {
            let full = meta.location.as_ref();
            let image = is_image_path(full.strip_prefix(prefix.as_ref()).unwrap_or(full));
            async move { Ok(image.then_some(Entry::Image(ImageFile { meta }))) }
        })
        .boxed()
}

/// The folder on the local disk, for a `file://` location.
fn local_folder(location: &Location) -> Option<std::path::PathBuf> {
    let url = url::Url::parse(location.url()).ok()?;
    (url.scheme() == "file").then(|| url.to_file_path().ok()).flatten()
}

/// Walks `root` (following symlinks, as object_store's local listing does), folder by folder
/// in name order, giving each entry to `found` until it returns false; what it cannot read is
/// a skipped entry. Hidden files and folders are not entered.
fn walk_local(root: &std::path::Path, mut found: impl FnMut(Entry) -> bool) {
    let walk = walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|entry| !entry.file_name().to_string_lossy().starts_with('.'));
    for entry in walk {
        let listed = match entry {
            Ok(entry) if entry.file_type().is_dir() => continue,
            Ok(entry) => {
                let path = entry.path();
                match path.strip_prefix(root).ok().and_then(|p| p.to_str()) {
                    None => skipped(path, "the name is not valid UTF-8, so it cannot be named in a URL"),
                    Some(relative) if !is_image_path(relative) => continue,
                    Some(_) => {
                        let meta = entry.metadata().map_err(|e| e.to_string()).and_then(|meta| {
                            let location = Path::from_absolute_path(path).map_err(|e| e.to_string())?;
                            let last_modified = meta.modified().map(DateTime::<Utc>::from).unwrap_or_default();
                            Ok(ObjectMeta { location, last_modified, size: meta.len(), e_tag: None, version: None })
                        });
                        match meta {
                            Ok(meta) => Entry::Image(ImageFile { meta }),
                            Err(reason) => skipped(path, &format!("cannot read its metadata: {reason}")),
                        }
                    }
                }
            }
            Err(error) => {
                let Some(path) = error.path() else { continue };
                let relative = path.strip_prefix(root).ok().map(|p| p.to_string_lossy().into_owned());
                // A file that is not an image is not missed; a folder may hold images.
                if !path.is_dir() && !relative.as_deref().is_some_and(is_image_path) && error.loop_ancestor().is_none()
                {
                    continue;
                }
                let reason = match (error.loop_ancestor(), error.io_error()) {
                    (Some(ancestor), _) => format!("symlink loop: it leads back to {}", ancestor.display()),
                    (None, Some(io)) => format!("cannot read it: {io}"),
                    (None, None) => error.to_string(),
                };
                skipped(path, &reason)
            }
        };
        if !found(listed) {
            return;
        }
    }
}

fn skipped(path: &std::path::Path, reason: &str) -> Entry {
    let location = Path::from_absolute_path(path)
        .unwrap_or_else(|_| Path::from_iter(path.to_string_lossy().split('/').filter(|p| !p.is_empty())));
    Entry::Skipped(Skipped { location, reason: reason.to_owned() })
}

/// Label of a file: the name of the folder it is in (`None` at the root of a store), as people
/// write it.
pub(crate) fn label_of(location: &Path, store: &ObjectStoreUrl) -> Option<String> {
    let parts: Vec<_> = location.parts().collect();
    let parent = parts.len().checked_sub(2).map(|i| &parts[i])?;
    Some(Naming::of(store).name(parent.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};

    #[test]
    fn image_extensions_are_case_insensitive() {
        for ok in ["a/b.jpg", "a/b.JPG", "b.jpeg", "x/y/z.Png", "Apple Golden 1/r_1_100.jpg"] {
            assert!(is_image_path(ok), "{ok}");
        }
        for not in ["a/b.gif", "a/b.jpg.txt", "a/jpg", "a/b", "notes.md", ""] {
            assert!(!is_image_path(not), "{not}");
        }
    }

    #[test]
    fn hidden_files_and_folders_are_skipped() {
        assert!(!is_image_path("Apple/.DS_Store"));
        assert!(!is_image_path("Apple/._0_100.jpg"));
        assert!(!is_image_path(".thumbnails/Apple/0.jpg"));
        assert!(is_image_path("Apple/0.jpg"));
    }

    #[test]
    fn label_is_the_parent_folder_as_people_name_it() {
        let (local, s3) = (ObjectStoreUrl::local_filesystem(), ObjectStoreUrl::parse("s3://b").unwrap());
        assert_eq!(label_of(&Path::from("data/Apple Golden 1/0_100.jpg"), &local).as_deref(), Some("Apple Golden 1"));
        assert_eq!(label_of(&Path::from("photo.jpg"), &s3), None);
        // A local path keeps `%` and accents percent-encoded; an S3 key is the name itself.
        assert_eq!(label_of(&Path::from_iter(["d", "50% pêche", "a.jpg"]), &local).as_deref(), Some("50% pêche"));
        assert_eq!(label_of(&Path::parse("d/50%25 off/a.jpg").unwrap(), &s3).as_deref(), Some("50%25 off"));
    }

    /// Names people give files: accents (NFC and NFD), spaces and every character that URLs
    /// or object_store paths treat specially.
    const AWKWARD_NAMES: [&str; 4] = [
        "p\u{ea}che 1.jpg",
        "pe\u{302}che 2.jpg",
        "50% #1 [a] {b} ^c `d` <e> |f| ~g \"h\" *i ?j.jpg",
        "back\\slash.png",
    ];

    #[tokio::test]
    async fn local_listing_keeps_awkward_names_and_reports_what_it_cannot_read() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let fruit = dir.path().join("Pêche");
        std::fs::create_dir_all(&fruit).unwrap();
        for name in AWKWARD_NAMES {
            std::fs::write(fruit.join(name), b"x").unwrap();
        }
        std::fs::write(fruit.join(std::ffi::OsStr::from_bytes(b"bad\xff.jpg")), b"x").unwrap();
        std::fs::create_dir_all(dir.path().join("loop")).unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("loop/back")).unwrap();
        std::fs::create_dir_all(dir.path().join(".git/objects")).unwrap();
        std::fs::write(dir.path().join(".git/objects/x.jpg"), b"x").unwrap();

        let runtime = datafusion::execution::runtime_env::RuntimeEnv::default();
        let location = Location::parse(&dir.path().display().to_string(), &runtime).unwrap();
        let listing = list_images(&location).await.unwrap();
        let mut names: Vec<String> =
            listing.images.iter().map(|f| location.relative_name(f.location()).unwrap()).collect();
        names.sort();
        let mut expected: Vec<String> = AWKWARD_NAMES.iter().map(|n| format!("Pêche/{n}")).collect();
        expected.sort();
        assert_eq!(names, expected);
        // Each listed path reads the file back through the store.
        for image in &listing.images {
            assert_eq!(location.get_path(image.location()).await.unwrap().as_deref(), Some(&b"x"[..]));
        }
        let reasons: Vec<&str> = listing.skipped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(listing.skipped.len(), 2, "{:?}", listing.skipped);
        assert!(reasons.iter().any(|r| r.contains("not valid UTF-8")), "{reasons:?}");
        assert!(reasons.iter().any(|r| r.starts_with("symlink loop")), "{reasons:?}");
    }

    #[tokio::test]
    async fn lists_images_recursively_and_sorted() {
        let store = InMemory::new();
        for path in ["in/b/2.jpg", "in/a/1.PNG", "in/a/deep/3.jpeg", "in/a/.DS_Store", "in/a/notes.txt", "other/x.jpg"]
        {
            store.put(&Path::from(path), PutPayload::from_static(b"x")).await.unwrap();
        }
        let runtime = datafusion::execution::runtime_env::RuntimeEnv::default();
        let url = url::Url::parse("memory://").unwrap();
        runtime.register_object_store(&url, std::sync::Arc::new(store));
        let listing = list_images(&Location::parse("memory:///in/", &runtime).unwrap()).await.unwrap();
        let paths: Vec<_> = listing.images.iter().map(|f| f.location().to_string()).collect();
        assert_eq!(paths, ["in/a/1.PNG", "in/a/deep/3.jpeg", "in/b/2.jpg"]);
    }
}
