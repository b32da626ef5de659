//! TPC-H data for the one-machine default, tests and benchmarks: the eight tables as Parquet
//! (from the `tpchgen` generator, which matches dbgen's output) plus a `catalog.yaml` for them.
//!
//! Files are written under a temporary name and renamed, and the catalog is written last, so a
//! directory with a catalog always holds complete data even if generation was interrupted.

use std::fs::File;
use std::path::{Path, PathBuf};

use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
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
/// Rows per generated batch and Parquet row group granularity; large enough for efficient
/// encoding, small enough to keep generation memory flat.
const BATCH_ROWS: usize = 64 * 1024;

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
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(BATCH_ROWS * 4))
        .build();
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
        let mut writer = ArrowWriter::try_new(file, batches.schema().clone(), Some(props.clone()))
            .map_err(parquet_err)?;
        let mut rows = 0;
        for batch in batches {
            rows += batch.num_rows();
            writer.write(&batch).map_err(parquet_err)?;
        }
        writer.close().map_err(parquet_err)?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        tracing::info!(table, rows, path = %path.display(), "generated");
        entries.push(TableEntry {
            name: table.to_owned(),
            location: file_name,
            hot: false,
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
        let file = File::open(dir.path().join("nation.parquet")).unwrap();
        let reader = parquet::file::reader::SerializedFileReader::new(file).unwrap();
        use parquet::file::reader::FileReader;
        assert_eq!(reader.metadata().file_metadata().num_rows(), 25);
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
