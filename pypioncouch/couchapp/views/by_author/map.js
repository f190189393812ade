function (doc) {
  if (doc.type === 'project' && doc.author) {
    emit([doc.author.toLowerCase(), doc._id], doc.author);
  }
}
