function (doc) {
  // Recent releases: query with descending=true. The id ends the key so that keyset
  // paging is exact when two releases share a second.
  if (doc.type === 'release' && doc.upload_time) {
    emit(doc.upload_time.concat([doc._id]), [doc.project, doc.name, doc.version, doc.yanked]);
  }
}
