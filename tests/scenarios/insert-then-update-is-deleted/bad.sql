INSERT INTO t VALUES (10, 'new', 1), (11, 'new2', 2);
UPDATE t SET v = 'changed' WHERE id = 10;
