//! Finding the image files under a location.

use datafusion::datasource::listing::PartitionedFile;
use object_store::path::Path;

use crate::location::{Location, StoreError};

/// File name extensions read as images, compared case-insensitively.
const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// One image file found by [`list_images`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    pub location: Path,
    pub size: u64,
}

impl ImageFile {
    pub fn new(location: Path, size: u64) -> Self {
        Self { location, size }
    }

    pub(crate) fn into_partitioned_file(self) -> PartitionedFile {
        PartitionedFile::new(self.location.to_string(), self.size)
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
/// outputs are the same from run to run.
pub async fn list_images(location: &Location) -> Result<Vec<ImageFile>, StoreError> {
    let prefix = location.listing_url().prefix();
    let mut files: Vec<ImageFile> = location
        .list()
        .await?
        .into_iter()
        .filter(|meta| {
            let full = meta.location.as_ref();
            let relative = full.strip_prefix(prefix.as_ref()).unwrap_or(full);
            is_image_path(relative)
        })
        .map(|meta| ImageFile::new(meta.location, meta.size))
        .collect();
    files.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(files)
}

/// Label of a file: the name of the folder it is in (`None` at the root of a store).
pub(crate) fn label_of(location: &Path) -> Option<String> {
    let parts: Vec<_> = location.parts().collect();
    let parent = parts.len().checked_sub(2).map(|i| &parts[i])?;
    Some(percent_decode(parent.as_ref()))
}

/// Object-store paths percent-encode a few characters (`%`, `#`, `?`...); labels and paths are
/// shown to people, so they are decoded back.
pub(crate) fn percent_decode(part: &str) -> String {
    percent_encoding::percent_decode_str(part).decode_utf8_lossy().into_owned()
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
    fn label_is_the_parent_folder_with_spaces_kept() {
        assert_eq!(label_of(&Path::from("data/Apple Golden 1/0_100.jpg")).as_deref(), Some("Apple Golden 1"));
        assert_eq!(label_of(&Path::from("photo.jpg")), None);
        assert_eq!(label_of(&Path::from_iter(["d", "50% off", "a.jpg"])).as_deref(), Some("50% off"));
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
        let files = list_images(&Location::parse("memory:///in/", &runtime).unwrap()).await.unwrap();
        let paths: Vec<_> = files.iter().map(|f| f.location.to_string()).collect();
        assert_eq!(paths, ["in/a/1.PNG", "in/a/deep/3.jpeg", "in/b/2.jpg"]);
    }
}
