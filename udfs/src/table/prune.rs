//! Filters on what the listing knows (`path`, `label`, `size`, `modified`, `etag`,
//! `read_error`), applied when the scan is planned: `WHERE label = 'Banana'` reads only the
//! bananas, as a `ListingTable` prunes on its partition columns.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema, exec_datafusion_err};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::error::Result;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::Expr;

use super::listing::label_of;
use super::source::read_error;
use super::{READ_ERROR, images_table_schema, modified_array};
use crate::location::Naming;

/// The columns of `images` known without reading a file.
const LISTING_COLUMNS: [&str; 6] = ["path", "label", "size", "modified", "etag", READ_ERROR];

/// Whether `filter` can be decided from the listing alone.
pub(crate) fn prunable(filter: &Expr) -> bool {
    let columns = filter.column_refs();
    !columns.is_empty() && columns.iter().all(|c| LISTING_COLUMNS.contains(&c.name.as_str())) && !filter.is_volatile()
}

/// The files of `files` for which every prunable filter of `filters` holds.
pub(crate) fn prune(
    files: Vec<PartitionedFile>,
    filters: &[Expr],
    store: &ObjectStoreUrl,
    state: &dyn Session,
) -> Result<Vec<PartitionedFile>> {
    let filters: Vec<&Expr> = filters.iter().filter(|f| prunable(f)).collect();
    if filters.is_empty() || files.is_empty() {
        return Ok(files);
    }
    let schema = listing_schema()?;
    let batch = listing_batch(&files, store, &schema)?;
    let df_schema = DFSchema::try_from(Arc::clone(&schema))?;
    let mut keep = vec![true; files.len()];
    for filter in filters {
        // Pushed-down filters name the table (`images.label`); the listing batch has no qualifier.
        let unqualified = filter
            .clone()
            .transform(|e| match e {
                Expr::Column(c) => Ok(Transformed::yes(Expr::Column(Column::new_unqualified(c.name)))),
                other => Ok(Transformed::no(other)),
            })?
            .data;
        let predicate = state.create_physical_expr(unqualified, &df_schema)?;
        let values = predicate.evaluate(&batch)?.into_array(batch.num_rows())?;
        let matches =
            values.as_boolean_opt().ok_or_else(|| exec_datafusion_err!("filter {filter} is not a predicate"))?;
        for (row, keep) in keep.iter_mut().enumerate() {
            *keep &= matches.is_valid(row) && matches.value(row);
        }
    }
    Ok(files.into_iter().zip(keep).filter_map(|(file, keep)| keep.then_some(file)).collect())
}

fn listing_schema() -> Result<SchemaRef> {
    let table = images_table_schema();
    let indices: Vec<usize> =
        LISTING_COLUMNS.iter().map(|name| table.table_schema().index_of(name)).collect::<Result<_, _>>()?;
    Ok(Arc::new(table.table_schema().project(&indices)?))
}

/// One row per file: the listing columns, as the scan would give them.
fn listing_batch(files: &[PartitionedFile], store: &ObjectStoreUrl, schema: &Arc<Schema>) -> Result<RecordBatch> {
    let naming = Naming::of(store);
    let metas = || files.iter().map(|f| &f.object_meta);
    let read_errors = files.iter().map(read_error);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(metas().map(|m| naming.display_url(store, &m.location)))),
        Arc::new(StringArray::from_iter(metas().map(|m| label_of(&m.location, store)))),
        Arc::new(UInt64Array::from_iter_values(metas().map(|m| m.size))),
        Arc::new(modified_array(metas())),
        Arc::new(StringArray::from_iter(metas().map(|m| m.e_tag.clone()))),
        Arc::new(StringArray::from_iter(read_errors)),
    ];
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}
