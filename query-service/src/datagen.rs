//! TPC-H data for the one-machine default, tests and benchmarks: the eight tables as Parquet
//! (from the `tpchgen` generator, which matches dbgen's output) plus a `catalog.yaml` for them.
//!
//! Files are written under a temporary name and renamed, and the catalog is written last, so a
//! directory with a catalog always holds complete data even if generation was interrupted.
//!
//! The files are laid out the way Quiver recommends for interactive queries
//! (`docs/performance.md`): rows sorted on the table's key (the generator's order, recorded as
//! the row groups' sorting columns), row groups of [`ROW_GROUP_ROWS`] rows so min/max
//! statistics can skip most of a table for a selective filter, pages of at most
//! [`PAGE_ROWS`] rows with a page index so a point lookup decodes one page per column, small
//! dictionaries (none on keys, which are delta-encoded), so reading one page does not mean
//! reading a large dictionary first, and bloom filters on key columns, which prune row groups
//! for equality on values that min/max cannot rule out. Tables small enough for every worker
//! to hold are marked `hot`, so workers load them into memory at warm-up.

use std::fs::File;
use std::path::{Path, PathBuf};

use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator,
    PartSuppGenerator, RegionGenerator, SupplierGenerator,
};
use tpchgen_arrow::{
    CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow,
    RecordBatchIterator, RegionArrow, SupplierArrow,
};

use quiver_worker::catalog::{CatalogFile, TableEntry};

/// The catalog file name inside a data directory.
pub const CATALOG_FILE: &str = "catalog.yaml";
/// Tables whose Parquet file is at most this size are marked `hot` in the catalog: in memory
/// they take about eight times the compressed file (a 15 MiB `lineitem` at SF 0.1 is about
/// 120 MiB), which every worker can hold, and a short query then skips decoding Parquet. At
/// SF 1 `lineitem` and `orders` stay on disk.
const HOT_MAX_FILE_BYTES: u64 = 32 << 20;
/// Rows per generated batch; small enough to keep generation memory flat.
const BATCH_ROWS: usize = 64 * 1024;
/// Rows per Parquet row group: the unit min/max statistics and bloom filters prune. Small
/// enough that a filter on a sorted key skips most of a table, large enough that a full scan
/// is not dominated by per-group overhead.
pub const ROW_GROUP_ROWS: usize = 64 * 1024;
/// Most rows per data page: the unit the page index prunes inside a row group.
pub const PAGE_ROWS: usize = 8 * 1024;
/// False-positive rate of the bloom filters.
const BLOOM_FPP: f64 = 0.01;
/// Largest dictionary page. Reading any page of a dictionary-encoded column chunk means
/// reading its dictionary first, so a column with many distinct values (prices, comments)
/// falls back to plain encoding once its dictionary reaches this size rather than making every
/// point lookup read and decode a dictionary of up to a megabyte (the writer's default).
const DICTIONARY_PAGE_BYTES: usize = 64 << 10;

/// Each table's key columns: the first is the sort order the generator writes (and the
/// sorting column recorded); all get bloom filters, for lookups by key and joins on it.
fn key_columns(table: &str) -> &'static [&'static str] {
    match table {
        "region" => &["r_regionkey"],
        "nation" => &["n_nationkey"],
        "supplier" => &["s_suppkey"],
        "part" => &["p_partkey"],
        "partsupp" => &["ps_partkey", "ps_suppkey"],
        "customer" => &["c_custkey"],
        "orders" => &["o_orderkey", "o_custkey"],
        "lineitem" => &["l_orderkey", "l_partkey", "l_suppkey"],
        other => unreachable!("not a TPC-H table: {other}"),
    }
}

/// Writer settings for `table` (see the module documentation).
fn writer_properties(table: &str, schema: &arrow::datatypes::Schema) -> WriterProperties {
    let keys = key_columns(table);
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_dictionary_page_size_limit(DICTIONARY_PAGE_BYTES)
        .set_statistics_enabled(EnabledStatistics::Page);
    if let Ok(sorted) = schema.index_of(keys[0]) {
        props = props.set_sorting_columns(Some(vec![SortingColumn {
            column_idx: i32::try_from(sorted).expect("few columns"),
            descending: false,
            nulls_first: false,
        }]));
    }
    for key in keys {
        let column = ColumnPath::from(*key);
        // Keys are (nearly) unique: a dictionary is pure overhead. Sorted, they delta-encode
        // to a few bits a value.
        props = props
            .set_column_dictionary_enabled(column.clone(), false)
            .set_column_encoding(column.clone(), Encoding::DELTA_BINARY_PACKED)
            .set_column_bloom_filter_enabled(column.clone(), true)
            .set_column_bloom_filter_fpp(column.clone(), BLOOM_FPP)
            .set_column_bloom_filter_max_ndv(column, ROW_GROUP_ROWS as u64);
    }
    props.build()
}

/// Why data generation failed.
#[derive(Debug, thiserror::Error)]
pub enum DatagenError {
    /// The scale factor is not a positive finite number.
    #[error("scale factor must be a positive number, got {0}")]
    ScaleFactor(f64),
    /// Writing a file failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Encoding Parquet failed.
    #[error("cannot write Parquet file {path}: {source}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: parquet::errors::ParquetError,
    },
}

/// The TPC-H tables, in dependency order.
pub const TABLES: [&str; 8] = [
    "region", "nation", "supplier", "part", "partsupp", "customer", "orders", "lineitem",
];

fn generator(table: &str, sf: f64) -> Box<dyn RecordBatchIterator> {
    match table {
        "region" => {
            Box::new(RegionArrow::new(RegionGenerator::new(sf, 1, 1)).with_batch_size(BATCH_ROWS))
        }
        "nation" => {
            Box::new(NationArrow::new(NationGenerator::new(sf, 1, 1)).with_batch_size(BATCH_ROWS))
        }
        "supplier" => Box::new(
            SupplierArrow::new(SupplierGenerator::new(sf, 1, 1)).with_batch_size(BATCH_ROWS),
        ),
        "part" => {
            Box::new(PartArrow::new(PartGenerator::new(sf, 1, 1)).with_batch_size(BATCH_ROWS))
        }
        "partsupp" => Box::new(
            PartSuppArrow::new(PartSuppGenerator::new(sf, 1, 1)).with_batch_size(BATCH_ROWS),
        ),
        "customer" => Box::new(
            CustomerArrow::new(CustomerGenerator::new(sf, 1, 1)).with_batch_size(BATCH_ROWS),
        ),
        "orders" => {
            Box::new(OrderArrow::new(OrderGenerator::new(sf, 1, 1)).with_batch_size(BATCH_ROWS))
        }
        "lineitem" => Box::new(
            LineItemArrow::new(LineItemGenerator::new(sf, 1, 1)).with_batch_size(BATCH_ROWS),
        ),
        other => unreachable!("not a TPC-H table: {other}"),
    }
}

/// True when `dir` already holds a generated data set (its catalog is written last).
pub fn exists(dir: &Path) -> bool {
    dir.join(CATALOG_FILE).is_file()
}

/// Generates TPC-H at `scale_factor` into `dir` and returns the catalog path.
pub fn generate(dir: &Path, scale_factor: f64) -> Result<PathBuf, DatagenError> {
    if !(scale_factor.is_finite() && scale_factor > 0.0) {
        return Err(DatagenError::ScaleFactor(scale_factor));
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| DatagenError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut entries = Vec::new();
    for table in TABLES {
        let file_name = format!("{table}.parquet");
        let path = dir.join(&file_name);
        let tmp = dir.join(format!(".{file_name}.tmp"));
        let batches = generator(table, scale_factor);
        let parquet_err = |source| DatagenError::Parquet {
            path: path.clone(),
            source,
        };
        let file = File::create(&tmp).map_err(io(&tmp))?;
        let props = writer_properties(table, batches.schema());
        let mut writer = ArrowWriter::try_new(file, batches.schema().clone(), Some(props))
            .map_err(parquet_err)?;
        let mut rows = 0;
        for batch in batches {
            rows += batch.num_rows();
            writer.write(&batch).map_err(parquet_err)?;
        }
        writer.close().map_err(parquet_err)?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        tracing::info!(table, rows, path = %path.display(), "generated");
        let bytes = std::fs::metadata(&path).map_err(io(&path))?.len();
        entries.push(TableEntry {
            name: table.to_owned(),
            location: file_name,
            hot: bytes <= HOT_MAX_FILE_BYTES,
        });
    }
    let catalog = CatalogFile {
        catalog: quiver_core::protocol::DEFAULT_CATALOG.to_owned(),
        schema: quiver_core::protocol::DEFAULT_SCHEMA.to_owned(),
        tables: entries,
    };
    let text = format!(
        "# TPC-H at scale factor {scale_factor}, generated by `quiver datagen`.\n{}",
        serde_yaml::to_string(&catalog).expect("catalog serialises")
    );
    let catalog_path = dir.join(CATALOG_FILE);
    std::fs::write(&catalog_path, text).map_err(io(&catalog_path))?;
    Ok(catalog_path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_worker::catalog::Catalog;

    #[test]
    fn generates_loadable_catalog() {
        let dir = tempfile::tempdir().unwrap();
        let path = generate(dir.path(), 0.001).unwrap();
        assert!(exists(dir.path()));
        let catalog = Catalog::load(&path).unwrap();
        assert_eq!(catalog.tables.len(), 8);
        // Every table of a small scale factor fits in a worker's memory.
        assert!(catalog.tables.iter().all(|t| t.hot), "{:?}", catalog.tables);
        let file = File::open(dir.path().join("nation.parquet")).unwrap();
        let reader = parquet::file::reader::SerializedFileReader::new(file).unwrap();
        use parquet::file::reader::FileReader;
        assert_eq!(reader.metadata().file_metadata().num_rows(), 25);
    }

    #[test]
    fn lays_out_files_for_pruning() {
        use parquet::file::properties::ReaderProperties;
        use parquet::file::reader::FileReader;
        use parquet::file::serialized_reader::{ReadOptionsBuilder, SerializedFileReader};
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), 0.01).unwrap();
        let file = File::open(dir.path().join("orders.parquet")).unwrap();
        let options = ReadOptionsBuilder::new()
            .with_page_index()
            .with_reader_properties(
                ReaderProperties::builder()
                    .set_read_bloom_filter(true)
                    .build(),
            )
            .build();
        let reader = SerializedFileReader::new_with_options(file, options).unwrap();
        let metadata = reader.metadata();
        let key = metadata
            .file_metadata()
            .schema_descr()
            .columns()
            .iter()
            .position(|c| c.name() == "o_orderkey")
            .unwrap();
        assert!(metadata.num_row_groups() >= 1);
        for (i, group) in metadata.row_groups().iter().enumerate() {
            assert!(group.num_rows() as usize <= ROW_GROUP_ROWS);
            let sorting = group.sorting_columns().expect("sorting columns recorded");
            assert_eq!(sorting[0].column_idx as usize, key);
            assert!(group.column(key).statistics().is_some());
            let row_group = reader.get_row_group(i).unwrap();
            let bloom = row_group
                .get_column_bloom_filter(key)
                .expect("a bloom filter on the key");
            assert!(bloom.check(&1_i64));
        }
        // A page index, with pages of at most PAGE_ROWS rows.
        let offsets = metadata.offset_index().expect("an offset index");
        let pages = &offsets[0][key].page_locations;
        let rows = metadata.row_group(0).num_rows();
        assert!(pages.len() as i64 >= (rows as usize).div_ceil(PAGE_ROWS) as i64);
    }

    #[test]
    fn rejects_bad_scale_factor() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            generate(dir.path(), 0.0),
            Err(DatagenError::ScaleFactor(_))
        ));
    }
}
