function (doc) {
  if (doc.type === 'project' && doc.keywords) {
    for (var i = 0; i < doc.keywords.length; i++) {
      emit([doc.keywords[i].toLowerCase(), doc._id], null);
    }
  }
}
