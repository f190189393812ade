function (doc) {
  // [classifier, project]: group_level=1 gives the count per classifier; a
  // startkey/endkey range on a parent's prefix selects its children too.
  if (doc.type === 'project' && doc.classifiers) {
    for (var i = 0; i < doc.classifiers.length; i++) {
      emit([doc.classifiers[i], doc._id], null);
    }
  }
}
