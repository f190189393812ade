function (doc) {
  // Recent releases: query with descending=true.
  if (doc.type === 'release' && doc.upload_time) {
    emit(doc.upload_time, [doc.project, doc.name, doc.version, doc.yanked]);
  }
}
