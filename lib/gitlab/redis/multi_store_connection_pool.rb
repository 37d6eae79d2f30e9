# frozen_string_literal: true

require "connection_pool"

module Gitlab
  module Redis
    # A ConnectionPool of MultiStores whose `with` borrows the checked-out MultiStore's
    # connections around the block (`MultiStore#with_borrowed_connection`), as GitLab's does: the
    # block's commands run on one connection of each store. Anything else in the pool is yielded
    # as it is.
    class MultiStoreConnectionPool < ::ConnectionPool
      def with(options = {})
        super do |conn|
          next yield conn unless conn.respond_to?(:with_borrowed_connection)

          conn.with_borrowed_connection { yield conn }
        end
      end
      alias then with
    end
  end
end
