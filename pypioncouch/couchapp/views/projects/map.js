function (doc) {
  // All projects by normalized name: the /simple/ index and the project list.
  if (doc.type === 'project') {
    emit(doc._id, [doc.name, doc.last_serial, doc.status, doc.summary, doc.latest_version,
                   doc.requires_python]);
  }
}
