function (doc) {
  if (doc.type === 'project' && doc.latest_version) {
    emit([doc.requires_python || '', doc._id], null);
  }
}
