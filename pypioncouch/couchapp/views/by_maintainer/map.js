function (doc) {
  if (doc.type === 'project' && doc.maintainer) {
    emit([doc.maintainer.toLowerCase(), doc._id], doc.maintainer);
  }
}
